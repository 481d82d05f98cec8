package realtime

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/gobwas/ws"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// This file holds what a session writes, and the one writer that writes
// it. The promises: queuing never waits (enqueue, send and requestResync
// put frames in the outbox and start a writer when none runs); at most one
// goroutine writes to a connection; a write of up to writeChunk bytes (or
// of one larger frame) must complete within Options.WriteTimeout from
// when it began, else the connection is dropped; a client past its send
// budget is closed with 1013 (slow_consumer).

// writeChunk is the size past which the writer splits what it writes:
// each write of up to this much (or of one larger frame) must complete
// within the write timeout, so a client must read at least writeChunk
// bytes per write timeout while frames wait for it.
const writeChunk = 64 << 10

// ioDeadline is the deadline of an I/O that begins now (zero: none).
func (ss *session) ioDeadline() time.Time {
	if d := ss.srv.o.WriteTimeout; d > 0 {
		return time.Now().Add(d)
	}
	return time.Time{}
}

// enqueue queues the live frame f without blocking; past the session's
// budget the session is closed (its messages stay in the store for the
// next connection).
func (ss *session) enqueue(f frame) {
	ss.queued(ss.out.Push(f))
}

// send queues b (a control frame or an error event) to be written before
// the next message frames. It never waits; it does nothing once the
// session is closing. Past the session's budget the session is closed.
func (ss *session) send(b []byte) {
	ss.queued(ss.out.Send(b))
}

// queued acts on the outbox's answer to a frame queued: the session
// closes past its budget, and a writer starts if the role is the caller's.
func (ss *session) queued(wake bool, err error) {
	if err != nil {
		ss.closeWith(ws.StatusCode(1013), err.Error(), false, "slow_consumer")
		return
	}
	if wake {
		go ss.writeLoop()
	}
}

// requestResync has the writer send the backlog again (live events may
// have missed this connection while presence had lost it).
func (ss *session) requestResync() {
	if ss.out.Resync() {
		go ss.writeLoop()
	}
}

// writeLoop holds the writer's role: it writes what the outbox hands it
// (the urgent frames, the backlog when asked, then the live frames in
// writes of about writeChunk) and returns when the outbox has nothing
// left.
func (ss *session) writeLoop() {
	var batch []frame
	for {
		w := ss.out.Take(writeChunk, batch)
		switch w.kind {
		case workNone:
			return
		case workUrgent:
			ss.writeUrgent(w.urgent, w.bytes)
		case workBacklog:
			ss.backlogPass()
		case workLive:
			if ss.writeLive(w.live) {
				ss.out.Release(w.bytes)
			}
			// Kept for the next batch while frames keep coming; the
			// outbox drops its room when the writer returns.
			clear(w.live)
			batch = w.live[:0]
		}
	}
}

// writeUrgent writes urgent frames (size bytes in the budget). A ping's
// pong deadline starts once it is written; after the close frame nothing
// more is written, and the session ends if it was to end then.
func (ss *session) writeUrgent(urgent []urgentFrame, size int64) {
	bufs := make(net.Buffers, len(urgent))
	var ping uint64
	end := false
	for i, u := range urgent {
		bufs[i] = u.data
		ping = max(ping, u.ping)
		end = end || u.endAfter
	}
	if !ss.writeBuffers(bufs) {
		return
	}
	ss.out.Release(size)
	if ping != 0 {
		ss.pingWritten(ping)
	}
	if end {
		ss.end()
	}
}

// writeLive writes live frames, each traced under its message's trace
// when tracing is on.
func (ss *session) writeLive(batch []frame) bool {
	s := ss.srv
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

// writeBuffers writes whole frames: the write must complete within the
// write timeout from when it began (not merely make some progress). A
// write that fails or times out ends the session.
func (ss *session) writeBuffers(bufs net.Buffers) bool {
	_ = ss.conn.SetWriteDeadline(ss.ioDeadline())
	_, err := bufs.WriteTo(ss.conn)
	if err == nil {
		return true
	}
	if m := ss.srv.m; m != nil {
		switch {
		case ss.isClosing():
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
