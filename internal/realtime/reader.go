package realtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// This file holds what a session reads: the client's frames and the acks
// they carry. The promises: one connection has at most one reader at a
// time; an idle connection (nothing received) holds no goroutine when the
// poller watches it, no read buffer, and no read deadline; a message that
// has begun arriving must arrive whole within Options.WriteTimeout; once
// the session is closing only control frames are acted on (the client's
// close, pings, pongs).

// readBufs are the read buffers of the sessions that are reading: an idle
// session holds none.
var readBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// startReading hands the connection to the poller, or to a goroutine of
// its own when it cannot be polled or the upgrade read bytes past the
// handshake (the goroutine reads those first).
//
// A session with Options.MaxSendsInFlight sends unanswered stops reading
// (readPaused) until one is answered: the poller does not watch it, no
// goroutine waits on it, and the bytes read past the last message handled
// stay in the read buffer, which the session keeps until it reads on.
func (ss *session) startReading() {
	if br := ss.pending; br != nil {
		ss.pending = nil
		go ss.readLoop(br, true)
		return
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
	ended := ss.state == stateClosed
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
		if br.Buffered() > 0 {
			switch ss.readMessages(br) {
			case readEnded:
				return
			case readPaused:
				if ss.pauseReading(func() { go ss.readLoop(br, handshake) }) {
					return
				}
				continue
			}
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
	ss.readPolled(w, br)
}

// readPolled reads, on the poller's path, what br holds and what has
// arrived, then watches the connection again; while the session's sends
// pause its reading it neither watches it nor gives br back (when br
// holds bytes not read yet), and the answer that resumes reading calls it
// again (br nil: nothing held).
func (ss *session) readPolled(w *watch, br *bufio.Reader) {
	for br != nil {
		state := ss.readMessages(br)
		if state == readPaused && br.Buffered() > 0 {
			if ss.pauseReading(func() { ss.readPolled(w, br) }) {
				return
			}
			continue
		}
		br.Reset(nil)
		readBufs.Put(br)
		br = nil
		switch state {
		case readEnded:
			return
		case readPaused:
			if ss.pauseReading(func() { ss.readPolled(w, nil) }) {
				return
			}
		}
	}
	if err := w.rearm(); err != nil {
		ss.end()
	}
}

// readState is where reading stands after readMessages.
type readState uint8

const (
	readMore   readState = iota // read on when more arrives
	readEnded                   // the connection is done: read no more
	readPaused                  // the sends in flight are at their bound
)

// readMessages handles the client's messages: at least one, then those
// already received, stopping when br has nothing buffered (so that an idle
// connection keeps no buffer and no deadline), or when a send took the
// session's sends in flight to their bound (readPaused; br may hold more).
// A message that has begun arriving must arrive whole within the I/O
// timeout (realtime.write_timeout) from when its reading began.
func (ss *session) readMessages(br *bufio.Reader) readState {
	s := ss.srv
	for {
		_ = ss.conn.SetReadDeadline(ss.ioDeadline())
		op, data, err := readMessage(br, s.o.MaxFrameBytes, ss.control)
		if err != nil {
			if !ss.readFailed(br, err) {
				return readEnded
			}
		} else if !op.IsControl() && !ss.isClosing() {
			ss.handle(op, data)
		}
		if ss.sendsFull() {
			_ = ss.conn.SetReadDeadline(time.Time{})
			return readPaused
		}
		if br.Buffered() == 0 {
			_ = ss.conn.SetReadDeadline(time.Time{})
			return readMore
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
		ss.abortOrEnd(proto.code, proto.reason)
		return false
	default:
		// The client closed, went away or broke the connection, or did
		// not finish a message (or answer a close) in time.
		ss.end()
		return false
	}
}

// abortOrEnd aborts the session with code and reason, or ends it if it
// was closing already (the client's frame answers the server's close).
func (ss *session) abortOrEnd(code ws.StatusCode, reason string) {
	if !ss.abort(code, reason) {
		ss.end()
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
		ss.abortOrEnd(code, echo)
		return errPeerClosed
	}
	return nil
}

// handle handles one client message: an ack or a send (send.go). A
// frame that is not JSON text, or not a valid ack, is answered with an
// error event and not applied, as is a frame other than a send over the
// frame rate; a text frame that is not UTF-8 closes the session (1007). A
// send is answered with a sent or send_error event.
func (ss *session) handle(op ws.OpCode, data []byte) {
	s := ss.srv
	if op != ws.OpText {
		if ss.frames != nil && !ss.frames.Allow() {
			ss.send(encodeError(web.CodeRateLimited, "too many frames; this one was not applied (ack again later)"))
			return
		}
		ss.send(encodeError(web.CodeBadRequest, "frames must be JSON text"))
		return
	}
	if !utf8.Valid(data) {
		ss.stop(ws.StatusInvalidFramePayloadData, "text frame is not UTF-8")
		return
	}
	f := decodeClientFrame(data)
	if f.kind == frameSend {
		// Sends count against the user's rate limit, as POST
		// /v1/messages does, not against the frame rate.
		ss.handleSend(f)
		return
	}
	if ss.frames != nil && !ss.frames.Allow() {
		ss.send(encodeError(web.CodeRateLimited, "too many frames; this one was not applied (ack again later)"))
		return
	}
	if f.code != "" {
		ss.send(encodeError(f.code, f.msg))
		return
	}
	ids := f.ids
	// Acks of ephemeral messages delivered here end here: the store
	// never held them.
	if ids = ss.out.StoredOnly(ids); len(ids) == 0 {
		if s.m != nil {
			s.m.WSAcks.Inc()
		}
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
