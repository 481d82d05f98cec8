package realtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// A session is one WebSocket connection. An idle session has no goroutine
// and no buffer: the poller wakes a reader when the client sends something,
// a writer goroutine runs only while frames are queued, and a timer sends
// the pings.
type session struct {
	srv  *Server
	id   string
	user string
	ip   string
	// conn is set, under mu, once the upgrade has opened the connection
	// (opened); nothing writes or closes it before.
	conn net.Conn
	// pending holds what the upgrade read past the handshake (usually
	// nothing); the first read takes it.
	pending *bufio.Reader

	// wmu serialises the frames written to conn.
	wmu sync.Mutex

	// mu guards what follows.
	mu sync.Mutex
	// queue holds live frames not yet written (at most SendQueue); it
	// takes memory only while it holds frames.
	queue []frame
	// writing is set while a goroutine owns the writes of message frames
	// (the backlog, then the queue); it returns when both are done.
	writing bool
	// resync asks the writer to send the backlog again (live events may
	// have missed this connection while presence had lost it).
	resync bool
	// backlogging is set while the writer sends the backlog.
	backlogging bool
	// sent holds the ids of the last backlog, whose messages may arrive
	// live too, until sentUntil.
	sent      map[string]struct{}
	sentUntil time.Time
	// traces remembers, when tracing is on, the write span of the live
	// frames sent and not yet acknowledged, so that the ack joins each
	// message's trace (at most maxTraced).
	traces map[string]trace.SpanContext
	// closing is set once the server has sent its close frame (or
	// dropped the connection); ended once the session is over.
	closing bool
	ended   bool
	// counted is set while the session counts in WSConnections.
	counted bool
	// watch is the poller's registration (nil: a goroutine reads).
	watch *watch
	// awaitingPong is set from a ping until its pong; pingGen invalidates
	// a timer firing that a pong overtook.
	awaitingPong bool
	pingGen      uint64
	pingTimer    *time.Timer
	expiryTimer  *time.Timer
	closeTimer   *time.Timer
	// earlyClose is the close frame of a stop that came before the
	// connection was open; opened sends it.
	earlyClose []byte

	// ctx is cancelled when the session ends: a store call on its behalf
	// returns at once.
	ctx    context.Context
	cancel context.CancelFunc
	// expires is when the session's token expires, leeway included.
	expires time.Time
	// frames limits the client's frames (nil: no limit).
	frames *rate.Limiter
}

// closeWait is how long the server waits for the client's answer to its
// close frame before it drops the connection.
const closeWait = 5 * time.Second

// readBufs are the read buffers of the sessions that are reading: an idle
// session holds none.
var readBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

func (ss *session) presenceConn(instance string) presence.Conn {
	return presence.Conn{User: ss.user, Instance: instance, ID: ss.id}
}

// start runs on the upgrade's goroutine once the connection is open:
// it registers the session, starts reading, then sends the backlog.
func (ss *session) start() {
	s := ss.srv
	pc := ss.presenceConn(s.o.Instance)
	actx, acancel := context.WithTimeout(ss.ctx, s.o.WriteTimeout)
	err := s.presence.Add(actx, pc)
	acancel()
	if err != nil {
		s.log.Warn("presence add failed", "err", err)
		ss.write(encodeError(web.CodeBackendUnavailable, "presence is unavailable; reconnect later"))
		ss.stop(ws.StatusCode(1013), "presence unavailable")
		ss.startReading()
		return
	}
	ss.mu.Lock()
	if s.o.PingInterval > 0 {
		ss.pingTimer = time.AfterFunc(s.o.PingInterval, ss.pingDue(0))
	}
	// The session lasts as long as its token: the client reconnects with
	// a fresh one.
	if !ss.expires.IsZero() {
		ss.expiryTimer = time.AfterFunc(time.Until(ss.expires), func() {
			if s.m != nil {
				s.m.WSDropped.WithLabelValues("token_expired").Inc()
			}
			ss.stop(ws.StatusPolicyViolation, "token expired")
		})
	}
	ss.mu.Unlock()
	ss.startReading()
	// The writer's role is this goroutine's (ss.writing is set from the
	// start): the backlog first, then what was queued meanwhile.
	if !ss.backlogPass() {
		return
	}
	// Counted once registered everywhere and its backlog sent: from now
	// on a message routed to it is written live.
	ss.mu.Lock()
	if !ss.ended && s.m != nil {
		s.m.WSConnections.Inc()
		ss.counted = true
	}
	ss.mu.Unlock()
	ss.writeLoop(false)
}

// startReading hands the connection to the poller, or to a goroutine of
// its own when it cannot be polled.
func (ss *session) startReading() {
	if ss.pending == nil || ss.pending.Buffered() == 0 {
		ss.pending = nil
		if sc, ok := ss.conn.(syscall.Conn); ok {
			if p := ss.srv.poller(); p != nil {
				w, err := p.watch(sc, ss.readReady)
				if err == nil {
					ss.mu.Lock()
					ss.watch = w
					ended := ss.ended
					ss.mu.Unlock()
					if ended {
						w.stop()
					}
					return
				}
			}
		}
	}
	go ss.readLoop()
}

// readLoop reads a connection that the poller does not watch.
func (ss *session) readLoop() {
	br := ss.pending
	if br == nil {
		br = bufio.NewReaderSize(ss.conn, 4096)
	}
	ss.pending = nil
	for ss.readMessages(br, false) {
	}
}

// readReady is the poller's call: the connection has data, or was closed.
func (ss *session) readReady(w *watch) {
	br := readBufs.Get().(*bufio.Reader)
	br.Reset(ss.conn)
	more := ss.readMessages(br, true)
	br.Reset(nil)
	readBufs.Put(br)
	if more {
		if err := w.rearm(); err != nil {
			ss.end()
		}
	}
}

// readMessages handles the client's messages: one, or with drain those
// already received (stopping when br has nothing buffered, so that an idle
// connection keeps no buffer). It reports whether to go on reading.
func (ss *session) readMessages(br *bufio.Reader, drain bool) bool {
	s := ss.srv
	for {
		if drain {
			// A message that has begun arriving must arrive whole within
			// the I/O timeout.
			_ = ss.conn.SetReadDeadline(time.Now().Add(s.o.WriteTimeout))
		}
		op, data, err := readMessage(br, s.o.MaxFrameBytes, ss.control)
		if err != nil {
			if !ss.readFailed(br, err) {
				return false
			}
		} else if !op.IsControl() && !ss.isClosing() {
			ss.handle(op, data)
		}
		if drain && br.Buffered() == 0 {
			_ = ss.conn.SetReadDeadline(time.Time{})
			return true
		}
	}
}

// readFailed ends or closes the session after a failed read, and reports
// whether to go on reading (to see the client's answer to a close).
func (ss *session) readFailed(br *bufio.Reader, err error) bool {
	s := ss.srv
	var big *tooBigError
	var proto *protocolError
	switch {
	case errors.As(err, &big):
		if s.m != nil && !ss.isClosing() {
			s.m.WSDropped.WithLabelValues("frame_too_big").Inc()
		}
		ss.stop(ws.StatusMessageTooBig, fmt.Sprintf("frame larger than %d bytes (realtime.max_frame_bytes)", s.o.MaxFrameBytes))
		// Skip the rest of the frame (for as long as the close waits)
		// so that the client's close frame can be read.
		_ = ss.conn.SetReadDeadline(time.Now().Add(closeWait))
		if _, err := io.CopyN(io.Discard, br, big.remaining); err != nil {
			ss.end()
			return false
		}
		return true
	case errors.As(err, &proto):
		// The rest of the stream cannot be framed: no answer is waited for.
		if ss.beginClose() {
			ss.write(closeFrame(proto.code, proto.reason))
		}
		ss.end()
		return false
	default:
		// The client closed, went away or broke the connection, or did
		// not finish a message (or answer a close) in time.
		ss.end()
		return false
	}
}

// control answers a control frame from the client.
func (ss *session) control(op ws.OpCode, payload []byte) error {
	switch op {
	case ws.OpPing:
		ss.write(serverFrame(ws.OpPong, payload))
	case ws.OpPong:
		ss.pongReceived()
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(payload)
		if ss.beginClose() {
			// The client closes: echo its code.
			if code.Empty() {
				code = ws.StatusNormalClosure
			}
			if !utf8.ValidString(reason) || code.IsNotUsed() || code.IsProtocolReserved() {
				code = ws.StatusProtocolError
			}
			ss.write(closeFrame(code, ""))
		}
		return errPeerClosed
	}
	return nil
}

// handle handles one client message: an ack.
func (ss *session) handle(op ws.OpCode, data []byte) {
	s := ss.srv
	if ss.frames != nil && !ss.frames.Allow() {
		ss.write(encodeError(web.CodeRateLimited, "too many frames; this one was not applied (ack again later)"))
		return
	}
	if op != ws.OpText {
		ss.write(encodeError(web.CodeBadRequest, "frames must be JSON text"))
		return
	}
	if !utf8.Valid(data) {
		ss.stop(ws.StatusInvalidFramePayloadData, "text frame is not UTF-8")
		return
	}
	ids, code, msg := decodeClientFrame(data)
	if code != "" {
		ss.write(encodeError(code, msg))
		return
	}
	actx, cancel := context.WithTimeout(ss.ctx, s.o.WriteTimeout)
	var span, del trace.Span
	if s.tracer != nil {
		actx, span = ss.startAck(actx, ids)
		actx, del = telemetry.Start(actx, s.tracer, "store delete", trace.SpanKindInternal)
	}
	n, err := s.store.Ack(actx, ss.user, ids)
	cancel()
	if span != nil {
		del.SetAttributes(telemetry.AttrCount.Int(n))
		telemetry.End(del, err)
		telemetry.End(span, err)
	}
	if err != nil {
		s.log.WarnContext(actx, "websocket ack failed", "err", err)
		ss.write(encodeError(web.CodeBackendUnavailable, "store is unavailable; ack again later"))
		return
	}
	if s.m != nil {
		s.m.WSAcks.Inc()
		s.m.MessagesAcked.Add(float64(n))
	}
}

// pingDue returns the ping timer's function for generation gen: it sends a
// ping, or, when the last one is still unanswered, drops the connection.
func (ss *session) pingDue(gen uint64) func() {
	return func() {
		s := ss.srv
		ss.mu.Lock()
		if ss.ended || ss.closing || gen != ss.pingGen {
			ss.mu.Unlock()
			return
		}
		if ss.awaitingPong {
			ss.mu.Unlock()
			if s.m != nil {
				s.m.WSDropped.WithLabelValues("pong_timeout").Inc()
			}
			ss.end()
			return
		}
		ss.awaitingPong = true
		ss.pingGen++
		ss.pingTimer = time.AfterFunc(s.o.PongTimeout, ss.pingDue(ss.pingGen))
		ss.mu.Unlock()
		ss.write(serverFrame(ws.OpPing, nil))
	}
}

func (ss *session) pongReceived() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.awaitingPong || ss.ended {
		return
	}
	ss.awaitingPong = false
	ss.pingTimer.Stop()
	ss.pingGen++
	ss.pingTimer = time.AfterFunc(ss.srv.o.PingInterval, ss.pingDue(ss.pingGen))
}

// enqueue queues f without blocking; a full queue drops the connection
// (its messages stay in the store for the next connection).
func (ss *session) enqueue(f frame) {
	ss.mu.Lock()
	if ss.ended || ss.closing {
		ss.mu.Unlock()
		return
	}
	if len(ss.queue) >= ss.srv.o.SendQueue && ss.backlogging {
		// A client busy with a long backlog is not slow: the stored
		// messages queued since it began are sent by another pass over
		// the store when it ends; only ephemeral ones stay queued.
		ss.queue = slices.DeleteFunc(ss.queue, func(q frame) bool { return !q.ephemeral })
		ss.resync = true
		if !f.ephemeral {
			ss.mu.Unlock()
			return
		}
	}
	if len(ss.queue) >= ss.srv.o.SendQueue {
		ss.mu.Unlock()
		if ss.srv.m != nil {
			ss.srv.m.WSDropped.WithLabelValues("slow_consumer").Inc()
		}
		ss.end()
		return
	}
	ss.queue = append(ss.queue, f)
	start := !ss.writing
	ss.writing = true
	ss.mu.Unlock()
	if start {
		go ss.writeLoop(false)
	}
}

// requestResync has the writer send the backlog again.
func (ss *session) requestResync() {
	ss.mu.Lock()
	if ss.ended || ss.closing {
		ss.mu.Unlock()
		return
	}
	start := !ss.writing
	ss.writing, ss.resync = true, true
	ss.mu.Unlock()
	if start {
		go ss.writeLoop(false)
	}
}

// writeLoop owns the message writes (ss.writing is set): it sends the
// backlog when asked, then the queued frames, and returns when nothing is
// left to send.
func (ss *session) writeLoop(backlog bool) {
	var batch []frame
	for {
		if backlog && !ss.backlogPass() {
			return
		}
		ss.mu.Lock()
		if ss.resync {
			ss.resync = false
			ss.mu.Unlock()
			backlog = true
			continue
		}
		if len(ss.queue) == 0 || ss.ended || ss.closing {
			ss.writing = false
			ss.queue = nil
			if time.Now().After(ss.sentUntil) {
				ss.sent = nil
			}
			ss.mu.Unlock()
			return
		}
		batch, ss.queue = ss.queue, batch[:0]
		sent := ss.sent
		ss.mu.Unlock()
		backlog = false
		if !ss.writeLive(batch, sent) {
			return
		}
		clear(batch)
		if cap(batch) > 64 {
			batch = nil // no large buffer kept for a quiet connection
		}
	}
}

// writeLive writes live frames, skipping those sent with the backlog.
func (ss *session) writeLive(batch []frame, sent map[string]struct{}) bool {
	s := ss.srv
	batch = slices.DeleteFunc(batch, func(f frame) bool { _, dup := sent[f.id]; return dup })
	if len(batch) == 0 {
		return true
	}
	bufs := make(net.Buffers, len(batch))
	var spans []trace.Span
	for i, f := range batch {
		if s.tracer != nil && f.trace.IsValid() {
			_, span := s.tracer.Start(trace.ContextWithSpanContext(ss.ctx, f.trace), "websocket write", trace.WithSpanKind(trace.SpanKindInternal))
			span.SetAttributes(telemetry.AttrMessageID.String(f.id))
			// Before the write: the client may ack at once.
			ss.remember(f.id, span.SpanContext())
			spans = append(spans, span)
		}
		bufs[i] = f.data
	}
	ok := ss.writeBuffers(bufs)
	for _, span := range spans {
		if !ok {
			span.SetStatus(codes.Error, "write failed")
		}
		span.End()
	}
	if !ok {
		return false
	}
	if s.m != nil {
		s.m.WSMessagesSent.WithLabelValues("live").Add(float64(len(batch)))
		now := time.Now()
		for _, f := range batch {
			if !f.accepted.IsZero() {
				s.m.DeliveryLatency.Observe(now.Sub(f.accepted).Seconds())
			}
		}
	}
	return true
}

// backlogPass sends the backlog (see sendBacklog) with the queue's
// overflow rule for a client busy with its backlog in force.
func (ss *session) backlogPass() bool {
	ss.mu.Lock()
	ss.backlogging = true
	ss.mu.Unlock()
	ok := ss.sendBacklog()
	ss.mu.Lock()
	ss.backlogging = false
	ss.mu.Unlock()
	return ok
}

// sendBacklog sends the user's stored messages, oldest first, and
// remembers their ids for a minute (a message stored while the backlog was
// read can arrive live too: it is sent once).
func (ss *session) sendBacklog() bool {
	s := ss.srv
	// Another pass right after one (a resync) skips what that one sent:
	// the client has those messages.
	ss.mu.Lock()
	var sent map[string]struct{}
	if time.Now().Before(ss.sentUntil) {
		sent = ss.sent
	}
	ss.mu.Unlock()
	prev := len(sent) > 0
	cursor := ""
	for {
		qctx, cancel := context.WithTimeout(ss.ctx, s.o.WriteTimeout)
		page, err := s.store.Pending(qctx, ss.user, cursor, s.o.BacklogPage)
		cancel()
		if ss.isClosing() {
			return false
		}
		if err != nil {
			s.log.Warn("backlog read failed", "err", err)
			ss.write(encodeError(web.CodeBackendUnavailable, "store is unavailable; reconnect later"))
			ss.stop(ws.StatusCode(1013), "store unavailable")
			return false
		}
		bufs := make(net.Buffers, 0, len(page.Envelopes))
		for _, env := range page.Envelopes {
			if _, done := sent[env.ID]; done && prev {
				continue
			}
			data, err := encodeMessage(env)
			if err != nil {
				s.log.Error("message frame encode failed; backlog message skipped", "id", env.ID, "err", err)
				continue
			}
			bufs = append(bufs, data)
			if sent == nil {
				sent = make(map[string]struct{})
			}
			sent[env.ID] = struct{}{}
		}
		if n := len(bufs); n > 0 {
			if !ss.writeBuffers(bufs) {
				return false
			}
			if s.m != nil {
				s.m.WSMessagesSent.WithLabelValues("backlog").Add(float64(n))
			}
		}
		if page.Next == "" {
			ss.mu.Lock()
			ss.sent, ss.sentUntil = sent, time.Now().Add(time.Minute)
			ss.mu.Unlock()
			return true
		}
		cursor = page.Next
	}
}

func (ss *session) isClosing() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.closing || ss.ended
}

// write writes one frame (a control frame, or an error event).
func (ss *session) write(b []byte) bool { return ss.writeBuffers(net.Buffers{b}) }

// writeBuffers writes whole frames; a write that makes no progress for
// the write timeout, or fails, drops the connection.
func (ss *session) writeBuffers(bufs net.Buffers) bool {
	ss.wmu.Lock()
	var err error
	for {
		_ = ss.conn.SetWriteDeadline(time.Now().Add(ss.srv.o.WriteTimeout))
		var n int64
		n, err = bufs.WriteTo(ss.conn) // consumes what it wrote
		if err == nil || n == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
	}
	ss.wmu.Unlock()
	if err == nil {
		return true
	}
	if m := ss.srv.m; m != nil {
		ss.mu.Lock()
		over := ss.ended || ss.closing
		ss.mu.Unlock()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			m.WSDropped.WithLabelValues("write_timeout").Inc()
		case !over:
			m.WSDropped.WithLabelValues("write_failed").Inc()
		}
	}
	ss.end()
	return false
}

// stop closes the session with a close frame carrying code and reason,
// then waits for the client's answer (at most closeWait). The first close
// wins.
func (ss *session) stop(code ws.StatusCode, reason string) {
	ss.mu.Lock()
	if ss.closing || ss.ended {
		ss.mu.Unlock()
		return
	}
	ss.closing = true
	if ss.conn == nil { // the upgrade is still under way: opened closes it
		ss.earlyClose = closeFrame(code, reason)
		ss.mu.Unlock()
		ss.cancel()
		return
	}
	ss.closeTimer = time.AfterFunc(closeWait, ss.end)
	ss.mu.Unlock()
	ss.cancel() // a store call for the session returns
	// Not on the caller's goroutine: the write may wait for a client that
	// does not read (up to the write timeout).
	go ss.write(closeFrame(code, reason))
}

// beginClose marks the session closing (no more message frames are
// queued or handled) and reports whether it was not closing yet: the
// caller then sends the close frame.
func (ss *session) beginClose() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	first := !ss.closing
	ss.closing = true
	return first
}

// end ends the session: the connection is closed, without a close frame
// of its own (stop sends one first; a client that stopped reading could
// not take one), and the session unregistered. It is idempotent and does
// not block.
func (ss *session) end() {
	ss.mu.Lock()
	if ss.ended {
		ss.mu.Unlock()
		return
	}
	ss.ended = true
	ss.closing = true
	ss.queue = nil
	for _, t := range []*time.Timer{ss.pingTimer, ss.expiryTimer, ss.closeTimer} {
		if t != nil {
			t.Stop()
		}
	}
	w, conn := ss.watch, ss.conn
	ss.mu.Unlock()
	ss.cancel()
	s := ss.srv
	s.hub.remove(ss)
	if w != nil {
		w.stop()
	}
	if conn != nil { // else opened closes it
		_ = conn.Close()
	}
	go ss.unregister()
}

// opened gives the session its connection, once the upgrade is done, and
// runs it (start); a session stopped or ended during the upgrade is closed
// instead: with the close frame of its stop, then the client's answer.
func (ss *session) opened(conn net.Conn) {
	ss.mu.Lock()
	ss.conn = conn
	early, ended := ss.earlyClose, ss.ended
	ss.earlyClose = nil
	if early != nil && !ended {
		ss.closeTimer = time.AfterFunc(closeWait, ss.end)
	}
	ss.mu.Unlock()
	switch {
	case ended:
		_ = conn.Close()
	case early != nil:
		go ss.write(early)
		ss.startReading()
	default:
		ss.start()
	}
}

// unregister removes the session from presence and the counts.
func (ss *session) unregister() {
	s := ss.srv
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := s.presence.Remove(rctx, ss.presenceConn(s.o.Instance)); err != nil {
		s.log.Warn("presence remove failed", "err", err)
	}
	rcancel()
	ss.mu.Lock()
	counted := ss.counted
	ss.mu.Unlock()
	if counted {
		s.m.WSConnections.Dec()
	}
	s.release(ss.ip)
	s.sessions.Done()
}
