package realtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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
// a writer goroutine runs only while frames wait to be written, and one
// timer, whose function never waits for a write, sends the pings and ends
// what outlives its deadline.
//
// Everything the server writes goes through the one writer: control
// frames and error events first (urgent), then the backlog, then live
// message frames. What waits to be written, or is being written, counts
// against the session's budget (Options.SendBufferBytes bytes and
// Options.SendQueue live frames): a client that cannot keep up is closed
// with 1013 and gets its messages, still stored, as backlog on its next
// connection. Each write must complete within Options.WriteTimeout from
// when it started.
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

	// mu guards what follows.
	mu sync.Mutex
	// queue holds live frames not yet written; it takes memory only while
	// it holds frames.
	queue []frame
	// urgent holds the frames written before the next message frames:
	// pings, pongs, error events and the close frame (last: nothing is
	// queued after it).
	urgent []urgentFrame
	// queued counts the bytes of the frames in queue and urgent, of those
	// being written, and of the backlog page held (as the frames it makes).
	queued int64
	// writing is set while a goroutine owns the writes (urgent frames, the
	// backlog, then the queue); it returns when nothing is left to write.
	writing bool
	// resync asks the writer to send the backlog again (live events may
	// have missed this connection while presence had lost it, or were
	// dropped from a full queue during the backlog).
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
	// closing is set once the server's close frame is queued (or the
	// connection dropped): no frame is queued after it; ended once the
	// session is over. endAfterClose ends the session once the close
	// frame is written (no answer is waited for).
	closing       bool
	ended         bool
	endAfterClose bool
	// counted is set while the session counts in WSConnections.
	counted bool
	// watch is the poller's registration (nil: a goroutine reads).
	watch *watch
	// timer is the session's one timer: it fires at the earliest of
	// nextPing, pongBy (while a ping is unanswered), expires (until the
	// session closes) and closeBy.
	timer *time.Timer
	// ping is the state of the last ping, pingSeq its number and
	// pingData its payload, which the client's pong must echo.
	ping     pingState
	pingSeq  uint64
	pingData [8]byte
	nextPing time.Time
	pongBy   time.Time
	// closeBy is when a closing session ends if the client has not
	// answered its close frame.
	closeBy time.Time

	// ctx is cancelled when the session ends: a store call on its behalf
	// returns at once.
	ctx    context.Context
	cancel context.CancelFunc
	// expires is when the session's token expires, leeway included.
	expires time.Time
	// frames limits the client's frames (nil: no limit).
	frames *rate.Limiter
}

// urgentFrame is a frame written before the next message frames.
type urgentFrame struct {
	data []byte
	// ping is the number of the ping this frame is (0: not a ping).
	ping uint64
	// close marks the server's close frame.
	close bool
}

// pingState is where the session's last ping stands.
type pingState uint8

const (
	pingNone    pingState = iota // none unanswered: the next is due at nextPing
	pingQueued                   // queued, not yet written
	pingWritten                  // written at pongBy - PongTimeout, unanswered
)

// closeWait is how long the server waits for the client's answer to its
// close frame before it drops the connection.
const closeWait = 5 * time.Second

// writeChunk is the size past which the writer splits what it writes:
// each write of up to this much (or of one larger frame) must complete
// within the write timeout, so a client must read at least writeChunk
// bytes per write timeout while frames wait for it.
const writeChunk = 64 << 10

// frameOverhead bounds what a message frame holds besides its base64
// payload: the frame header and the envelope's other fields (id, sender
// and recipient URNs, type, time) in JSON.
const frameOverhead = 2 << 10

// defaultMaxPayload is the largest payload assumed when
// Options.MaxPayloadBytes is not set (the API's default limit).
const defaultMaxPayload = 64 << 10

// messageFrameBound is an upper bound of the size of the frame of a
// message whose payload has n bytes.
func messageFrameBound(n int) int64 {
	return int64(4*((n+2)/3) + frameOverhead)
}

// readBufs are the read buffers of the sessions that are reading: an idle
// session holds none.
var readBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

func (ss *session) presenceConn(instance string) presence.Conn {
	return presence.Conn{User: ss.user, Instance: instance, ID: ss.id}
}

// start runs on the upgrade's goroutine once the connection is open: it
// registers the session, starts reading, then, as the session's writer,
// sends the backlog and what was queued meanwhile.
func (ss *session) start() {
	s := ss.srv
	pc := ss.presenceConn(s.o.Instance)
	actx, acancel := context.WithTimeout(ss.ctx, s.o.WriteTimeout)
	err := s.presence.Add(actx, pc)
	acancel()
	if err != nil {
		s.log.Warn("presence add failed", "err", err)
		ss.send(encodeError(web.CodeBackendUnavailable, "presence is unavailable; reconnect later"))
		ss.stop(ws.StatusCode(1013), "presence unavailable")
		ss.startReading()
		ss.writeLoop(false)
		return
	}
	ss.mu.Lock()
	now := time.Now()
	if s.o.PingInterval > 0 {
		ss.nextPing = now.Add(s.o.PingInterval)
	}
	// The session lasts as long as its token (expires): the client
	// reconnects with a fresh one.
	ss.scheduleLocked(now)
	ss.mu.Unlock()
	ss.startReading()
	// The writer's role is this goroutine's (ss.writing is set from the
	// start): the backlog first, then what was queued meanwhile.
	if ss.backlogPass() {
		// Counted once registered everywhere and its backlog sent: from
		// now on a message routed to it is written live.
		ss.mu.Lock()
		if !ss.ended && s.m != nil {
			s.m.WSConnections.Inc()
			ss.counted = true
		}
		ss.mu.Unlock()
	}
	ss.writeLoop(false)
}

// startReading hands the connection to the poller, or to a goroutine of
// its own when it cannot be polled or the upgrade read bytes past the
// handshake (the goroutine reads those first).
func (ss *session) startReading() {
	if br := ss.pending; br != nil {
		ss.pending = nil
		if br.Buffered() > 0 {
			go ss.readLoop(br, true)
			return
		}
	}
	if ss.watchConn() {
		return
	}
	go ss.readLoop(bufio.NewReaderSize(ss.conn, 4096), false)
}

// watchConn has the poller watch the connection, and reports whether it
// does.
func (ss *session) watchConn() bool {
	sc, ok := ss.conn.(syscall.Conn)
	if !ok {
		return false
	}
	p := ss.srv.poller()
	if p == nil {
		return false
	}
	w, err := p.watch(sc, ss.readReady)
	if err != nil {
		return false
	}
	ss.mu.Lock()
	ss.watch = w
	ended := ss.ended
	ss.mu.Unlock()
	if ended {
		w.stop()
	}
	return true
}

// readLoop reads a connection the poller does not watch, by the poller's
// reader's rules: an idle connection waits for a message's first byte
// without a deadline (pings find a dead peer), then the message must
// arrive whole within the I/O timeout (readMessages). With handshake, br
// holds bytes the upgrade read past the handshake: once they are read the
// poller takes the connection over, if there is one.
func (ss *session) readLoop(br *bufio.Reader, handshake bool) {
	for {
		if br.Buffered() > 0 && !ss.readMessages(br) {
			return
		}
		if handshake {
			handshake = false
			if ss.watchConn() {
				return
			}
		}
		_ = ss.conn.SetReadDeadline(time.Time{})
		if _, err := br.Peek(1); err != nil {
			ss.readFailed(br, err)
			return
		}
	}
}

// readReady is the poller's call: the connection has data, or was closed.
func (ss *session) readReady(w *watch) {
	br := readBufs.Get().(*bufio.Reader)
	br.Reset(ss.conn)
	more := ss.readMessages(br)
	br.Reset(nil)
	readBufs.Put(br)
	if more {
		if err := w.rearm(); err != nil {
			ss.end()
		}
	}
}

// ioDeadline is the deadline of an I/O that begins now (zero: none).
func (ss *session) ioDeadline() time.Time {
	if d := ss.srv.o.WriteTimeout; d > 0 {
		return time.Now().Add(d)
	}
	return time.Time{}
}

// readMessages handles the client's messages: at least one, then those
// already received, stopping when br has nothing buffered (so that an idle
// connection keeps no buffer and no deadline). A message that has begun
// arriving must arrive whole within the I/O timeout (realtime.write_timeout)
// from when its reading began. It reports whether to go on reading.
func (ss *session) readMessages(br *bufio.Reader) bool {
	s := ss.srv
	for {
		_ = ss.conn.SetReadDeadline(ss.ioDeadline())
		op, data, err := readMessage(br, s.o.MaxFrameBytes, ss.control)
		if err != nil {
			if !ss.readFailed(br, err) {
				return false
			}
		} else if !op.IsControl() && !ss.isClosing() {
			ss.handle(op, data)
		}
		if br.Buffered() == 0 {
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
	case errors.Is(err, errPeerClosed):
		// control answered the close; the session ends once that is
		// written.
		return false
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
		if !ss.abort(proto.code, proto.reason) {
			ss.end()
		}
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
		ss.send(serverFrame(ws.OpPong, payload))
	case ws.OpPong:
		ss.pongReceived(payload)
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(payload)
		echo := ""
		switch {
		case len(payload) == 1:
			// A close body is empty or starts with a two-byte code
			// (RFC 6455 5.5.1).
			code, echo = ws.StatusProtocolError, "close frame body of 1 byte"
		case code.Empty():
			code = ws.StatusNormalClosure
		case !utf8.ValidString(reason) || code.IsNotUsed() || code.IsProtocolReserved():
			code = ws.StatusProtocolError
		}
		// The client closes: echo its code, then end. A close that
		// answers the server's own ends the session at once.
		if !ss.abort(code, echo) {
			ss.end()
		}
		return errPeerClosed
	}
	return nil
}

// handle handles one client message: an ack.
func (ss *session) handle(op ws.OpCode, data []byte) {
	s := ss.srv
	if ss.frames != nil && !ss.frames.Allow() {
		ss.send(encodeError(web.CodeRateLimited, "too many frames; this one was not applied (ack again later)"))
		return
	}
	if op != ws.OpText {
		ss.send(encodeError(web.CodeBadRequest, "frames must be JSON text"))
		return
	}
	if !utf8.Valid(data) {
		ss.stop(ws.StatusInvalidFramePayloadData, "text frame is not UTF-8")
		return
	}
	ids, code, msg := decodeClientFrame(data)
	if code != "" {
		ss.send(encodeError(code, msg))
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
		ss.send(encodeError(web.CodeBackendUnavailable, "store is unavailable; ack again later"))
		return
	}
	if s.m != nil {
		s.m.WSAcks.Inc()
		s.m.MessagesAcked.Add(float64(n))
	}
}

// scheduleLocked sets the session's timer to its earliest deadline (ss.mu
// held).
func (ss *session) scheduleLocked(now time.Time) {
	if ss.ended {
		return
	}
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	earliest(ss.closeBy)
	if ss.ping == pingWritten {
		earliest(ss.pongBy)
	}
	if !ss.closing {
		earliest(ss.expires)
		if ss.ping == pingNone {
			earliest(ss.nextPing)
		}
	}
	switch {
	case next.IsZero():
		if ss.timer != nil {
			ss.timer.Stop()
		}
	case ss.timer == nil:
		ss.timer = time.AfterFunc(next.Sub(now), ss.tick)
	default:
		ss.timer.Reset(next.Sub(now))
	}
}

// tick is the session's timer function: it acts on the deadlines passed
// (the close's answer, the pong, the token, the next ping) and sets the
// timer to the next one. It never waits for another write: a ping is
// queued, and written by this goroutine only when no writer runs.
func (ss *session) tick() {
	s := ss.srv
	now := time.Now()
	ss.mu.Lock()
	if ss.ended {
		ss.mu.Unlock()
		return
	}
	switch {
	case !ss.closeBy.IsZero() && !now.Before(ss.closeBy):
		ss.mu.Unlock()
		ss.end()
		return
	case ss.ping == pingWritten && !now.Before(ss.pongBy):
		ss.mu.Unlock()
		if s.m != nil {
			s.m.WSDropped.WithLabelValues("pong_timeout").Inc()
		}
		ss.end()
		return
	case !ss.closing && !ss.expires.IsZero() && !now.Before(ss.expires):
		ss.mu.Unlock()
		ss.closeWith(ws.StatusPolicyViolation, "token expired", false, "token_expired")
		return
	}
	write := false
	if !ss.closing && ss.ping == pingNone && !ss.nextPing.IsZero() && !now.Before(ss.nextPing) {
		ss.ping, ss.nextPing = pingQueued, time.Time{}
		ss.pingSeq++
		binary.LittleEndian.PutUint64(ss.pingData[:], rand.Uint64())
		f := serverFrame(ws.OpPing, ss.pingData[:])
		ss.urgent = append(ss.urgent, urgentFrame{data: f, ping: ss.pingSeq})
		ss.queued += int64(len(f))
		write = !ss.writing
		ss.writing = true
	}
	ss.scheduleLocked(now)
	ss.mu.Unlock()
	if write {
		ss.writeLoop(false)
	}
}

// pongReceived takes the client's pong: one that echoes the unanswered
// ping clears its deadline, and the next ping is due a ping interval from
// now; any other pong changes nothing.
func (ss *session) pongReceived(payload []byte) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ended || ss.ping == pingNone || !bytes.Equal(payload, ss.pingData[:]) {
		return
	}
	// (A ping still marked queued was written: its payload is random,
	// only a client that read it can echo it.)
	now := time.Now()
	ss.ping, ss.pongBy = pingNone, time.Time{}
	ss.nextPing = now.Add(ss.srv.o.PingInterval)
	ss.scheduleLocked(now)
}

// fitsLocked reports whether a live frame of size bytes can be queued
// within the session's budget (ss.mu held).
func (ss *session) fitsLocked(size int64) bool {
	o := ss.srv.o
	return (o.SendQueue <= 0 || len(ss.queue) < o.SendQueue) &&
		(o.SendBufferBytes <= 0 || ss.queued+size <= o.SendBufferBytes)
}

// enqueue queues f without blocking; past the session's budget the
// session is closed (its messages stay in the store for the next
// connection).
func (ss *session) enqueue(f frame) {
	size := int64(len(f.data))
	ss.mu.Lock()
	if ss.ended || ss.closing {
		ss.mu.Unlock()
		return
	}
	if ss.backlogging && !ss.fitsLocked(size) {
		// A client busy with a long backlog is not slow: the stored
		// messages queued since it began are sent by another pass over
		// the store when it ends; only ephemeral ones stay queued.
		ss.queue = slices.DeleteFunc(ss.queue, func(q frame) bool {
			if q.ephemeral {
				return false
			}
			ss.queued -= int64(len(q.data))
			return true
		})
		ss.resync = true
		if !f.ephemeral {
			ss.mu.Unlock()
			return
		}
	}
	if !ss.fitsLocked(size) {
		ss.mu.Unlock()
		ss.slowConsumer()
		return
	}
	ss.queue = append(ss.queue, f)
	ss.queued += size
	start := !ss.writing
	ss.writing = true
	ss.mu.Unlock()
	if start {
		go ss.writeLoop(false)
	}
}

// slowConsumer closes a session that cannot keep up with its messages.
func (ss *session) slowConsumer() {
	o := ss.srv.o
	reason := fmt.Sprintf("more than %d bytes waiting (realtime.send_buffer_bytes); reconnect for the rest", o.SendBufferBytes)
	ss.mu.Lock()
	if o.SendQueue > 0 && len(ss.queue) >= o.SendQueue {
		reason = fmt.Sprintf("more than %d frames waiting (realtime.send_queue); reconnect for the rest", o.SendQueue)
	}
	ss.mu.Unlock()
	ss.closeWith(ws.StatusCode(1013), reason, false, "slow_consumer")
}

// send queues b (a control frame or an error event) to be written before
// the next message frames. It never waits; it does nothing once the
// session is closing. Past the session's budget the session is closed.
func (ss *session) send(b []byte) {
	o := ss.srv.o
	ss.mu.Lock()
	if ss.closing || ss.ended {
		ss.mu.Unlock()
		return
	}
	if o.SendBufferBytes > 0 && ss.queued+int64(len(b)) > o.SendBufferBytes {
		ss.mu.Unlock()
		ss.slowConsumer()
		return
	}
	ss.urgent = append(ss.urgent, urgentFrame{data: b})
	ss.queued += int64(len(b))
	start := ss.conn != nil && !ss.writing
	ss.writing = ss.writing || start
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

// release takes n bytes written off the session's count.
func (ss *session) release(n int64) {
	ss.mu.Lock()
	if !ss.ended {
		ss.queued -= n
	}
	ss.mu.Unlock()
}

// writeLoop owns the writes (ss.writing is set): the urgent frames first,
// then the backlog when asked, then the queued frames, in writes of about
// writeChunk; it returns when nothing is left to write.
func (ss *session) writeLoop(backlog bool) {
	var batch []frame
	for {
		ss.mu.Lock()
		switch {
		case ss.ended:
			ss.mu.Unlock()
			return
		case len(ss.urgent) > 0:
			ss.mu.Unlock()
			ss.writeUrgent()
			continue
		case ss.closing:
			ss.writing = false
			ss.mu.Unlock()
			return
		case ss.resync:
			ss.resync = false
			backlog = true
		}
		if backlog {
			ss.mu.Unlock()
			ss.backlogPass()
			backlog = false
			continue
		}
		if len(ss.queue) == 0 {
			ss.writing = false
			ss.queue = nil
			if time.Now().After(ss.sentUntil) {
				ss.sent = nil
			}
			ss.mu.Unlock()
			return
		}
		n, size := 0, int64(0)
		for n < len(ss.queue) && (n == 0 || size+int64(len(ss.queue[n].data)) <= writeChunk) {
			size += int64(len(ss.queue[n].data))
			n++
		}
		if n == len(ss.queue) {
			batch, ss.queue = ss.queue, batch[:0]
		} else {
			// The rest moves to the front: the queue keeps its room.
			batch = append(batch[:0], ss.queue[:n]...)
			rest := copy(ss.queue, ss.queue[n:])
			clear(ss.queue[rest:])
			ss.queue = ss.queue[:rest]
		}
		sent := ss.sent
		ss.mu.Unlock()
		if ss.writeLive(batch, sent) {
			ss.release(size)
		}
		// Kept for the next batch while frames keep coming; the queue
		// drops its room when the writer returns.
		clear(batch)
	}
}

// writeUrgent writes the urgent frames. A ping's pong deadline starts
// once it is written; after the close frame nothing more is written, and
// the session ends if it was to end then.
func (ss *session) writeUrgent() {
	ss.mu.Lock()
	urgent := ss.urgent
	ss.urgent = nil
	ss.mu.Unlock()
	bufs := make(net.Buffers, len(urgent))
	var size int64
	var ping uint64
	closed := false
	for i, u := range urgent {
		bufs[i] = u.data
		size += int64(len(u.data))
		ping = max(ping, u.ping)
		closed = closed || u.close
	}
	if !ss.writeBuffers(bufs) {
		return
	}
	now := time.Now()
	ss.mu.Lock()
	if !ss.ended {
		ss.queued -= size
		if ping != 0 && ping == ss.pingSeq && ss.ping == pingQueued {
			ss.ping, ss.pongBy = pingWritten, now.Add(ss.srv.o.PongTimeout)
			ss.scheduleLocked(now)
		}
	}
	end := closed && ss.endAfterClose
	ss.mu.Unlock()
	if end {
		ss.end()
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

// backlogBytes bounds the payload bytes of the next backlog page (for
// Options.BacklogPage messages): the frames of a page within it fit in
// the room left in the session's budget. The store returns the first
// message whatever its size, and the budget always has room for one
// frame of the largest payload (config), so a page is never empty.
func (ss *session) backlogBytes() int {
	o := ss.srv.o
	if o.SendBufferBytes <= 0 {
		return 0
	}
	ss.mu.Lock()
	room := o.SendBufferBytes - ss.queued
	ss.mu.Unlock()
	// A frame is at most 4/3 of its payload (base64) plus 4 bytes of
	// padding and the overhead.
	room -= int64(o.BacklogPage) * (frameOverhead + 4)
	return int(max(room*3/4, 1))
}

// sendBacklog sends the user's stored messages, oldest first, and
// remembers their ids for a minute (a message stored while the backlog was
// read can arrive live too: it is sent once). It reads a page only when
// the session's budget has room for it, and counts the page in the budget
// (at the size of the frames it makes) until they are written.
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
		page, err := s.store.PendingWithin(qctx, ss.user, cursor, s.o.BacklogPage, ss.backlogBytes())
		cancel()
		if ss.isClosing() {
			return false
		}
		if err != nil {
			s.log.Warn("backlog read failed", "err", err)
			ss.send(encodeError(web.CodeBackendUnavailable, "store is unavailable; reconnect later"))
			ss.stop(ws.StatusCode(1013), "store unavailable")
			return false
		}
		// held counts what the page still holds: each envelope at the
		// bound of its frame until encoded, then its frame until written.
		var held int64
		for _, env := range page.Envelopes {
			held += messageFrameBound(len(env.Payload))
		}
		ss.mu.Lock()
		ss.queued += held
		ss.mu.Unlock()
		var chunk net.Buffers
		var chunkSize int64
		fail := func() bool {
			ss.release(held)
			return false
		}
		for i, env := range page.Envelopes {
			page.Envelopes[i] = nil // the frame replaces it
			bound := messageFrameBound(len(env.Payload))
			if _, done := sent[env.ID]; done && prev {
				held -= bound
				ss.release(bound)
				continue
			}
			data, err := encodeMessage(env)
			if err != nil {
				s.log.Error("message frame encode failed; backlog message skipped", "id", env.ID, "err", err)
				held -= bound
				ss.release(bound)
				continue
			}
			held -= bound - int64(len(data))
			ss.release(bound - int64(len(data)))
			chunk = append(chunk, data)
			chunkSize += int64(len(data))
			if sent == nil {
				sent = make(map[string]struct{})
			}
			sent[env.ID] = struct{}{}
			if chunkSize >= writeChunk {
				if !ss.writeBacklog(chunk, chunkSize) {
					return fail()
				}
				held -= chunkSize
				clear(chunk)
				chunk, chunkSize = chunk[:0], 0
			}
		}
		if len(chunk) > 0 && !ss.writeBacklog(chunk, chunkSize) {
			return fail()
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

// writeBacklog writes backlog frames (size bytes counted in the session's
// budget), after the urgent frames waiting; it reports false, writing
// nothing, once the session is closing.
func (ss *session) writeBacklog(bufs net.Buffers, size int64) bool {
	ss.mu.Lock()
	urgent := len(ss.urgent) > 0
	ss.mu.Unlock()
	if urgent {
		ss.writeUrgent()
	}
	if ss.isClosing() {
		return false
	}
	n := len(bufs)
	if !ss.writeBuffers(bufs) {
		return false
	}
	ss.release(size)
	if m := ss.srv.m; m != nil {
		m.WSMessagesSent.WithLabelValues("backlog").Add(float64(n))
	}
	return true
}

func (ss *session) isClosing() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.closing || ss.ended
}

// writeBuffers writes whole frames: the write must complete within the
// write timeout from when it began (not merely make some progress). A
// write that fails or times out drops the connection.
func (ss *session) writeBuffers(bufs net.Buffers) bool {
	_ = ss.conn.SetWriteDeadline(ss.ioDeadline())
	_, err := bufs.WriteTo(ss.conn)
	if err == nil {
		return true
	}
	if m := ss.srv.m; m != nil {
		ss.mu.Lock()
		over := ss.ended || ss.closing
		ss.mu.Unlock()
		switch {
		case over:
			// Counted with the reason it closed for.
		case errors.Is(err, os.ErrDeadlineExceeded):
			m.WSDropped.WithLabelValues("write_timeout").Inc()
		default:
			m.WSDropped.WithLabelValues("write_failed").Inc()
		}
	}
	ss.end()
	return false
}

// stop closes the session with a close frame carrying code and reason,
// then waits for the client's answer (at most closeWait). The first close
// wins: it reports whether this one did. It never waits.
func (ss *session) stop(code ws.StatusCode, reason string) bool {
	return ss.closeWith(code, reason, false, "")
}

// abort closes the session with a close frame carrying code and reason,
// and ends it once that is written: no answer is waited for. It reports
// whether the session was not closing yet.
func (ss *session) abort(code ws.StatusCode, reason string) bool {
	return ss.closeWith(code, reason, true, "")
}

// closeWith closes the session (see stop and abort); when it does, the
// close counts under the reason dropped of WSDropped, if not "".
func (ss *session) closeWith(code ws.StatusCode, reason string, endAfter bool, dropped string) bool {
	ss.mu.Lock()
	if ss.closing || ss.ended {
		ss.mu.Unlock()
		return false
	}
	if m := ss.srv.m; m != nil && dropped != "" {
		m.WSDropped.WithLabelValues(dropped).Inc()
	}
	ss.closing, ss.endAfterClose = true, endAfter
	// Message frames not yet written are dropped: the stored ones are
	// the next connection's backlog.
	for _, q := range ss.queue {
		ss.queued -= int64(len(q.data))
	}
	ss.queue = nil
	f := closeFrame(code, reason)
	ss.urgent = append(ss.urgent, urgentFrame{data: f, close: true})
	ss.queued += int64(len(f))
	start := false
	if ss.conn != nil { // else opened sends it
		now := time.Now()
		ss.closeBy = now.Add(closeWait)
		ss.scheduleLocked(now)
		start = !ss.writing
		ss.writing = true
	}
	ss.mu.Unlock()
	ss.cancel() // a store call for the session returns
	if start {
		go ss.writeLoop(false)
	}
	return true
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
	ss.queue, ss.urgent, ss.queued = nil, nil, 0
	if ss.timer != nil {
		ss.timer.Stop()
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
	ended, closing := ss.ended, ss.closing
	if closing && !ended {
		now := time.Now()
		ss.closeBy = now.Add(closeWait)
		ss.scheduleLocked(now)
	}
	ss.mu.Unlock()
	switch {
	case ended:
		_ = conn.Close()
	case closing:
		// The close frame (the writer's role is held from the start).
		go ss.writeLoop(false)
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
