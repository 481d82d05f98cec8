package realtime

import (
	"context"
	"math"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// This file holds sending over the WebSocket: a client's send frame is a
// message accepted under the rules of POST /v1/messages, the sender being
// the session's user, and answered on the same connection with a sent or
// a send_error event matched by the frame's ref. The promises: the reader
// never waits for an accept (each runs on a goroutine of its own, and
// concurrent accepts share the store's group commit); a connection has at
// most Options.MaxSendsInFlight sends unanswered, and past that its frames
// are not read (on the poller's path the connection is not watched)
// until an answer is queued; nothing is dropped: a send is answered,
// unless its connection ends first.

// DefaultMaxSendsInFlight is Options.MaxSendsInFlight when it is not set.
const DefaultMaxSendsInFlight = 64

// Accepter accepts the messages sessions send (route.Core).
type Accepter interface {
	Accept(ctx context.Context, msg route.Message) (route.Accepted, error)
}

// AcceptSends has the server accept the messages its clients send over
// their connections: acc accepts them, and limiter (nil: no limit) is
// each user's rate limit of sends, the one the HTTP API applies to its
// requests (a send frame counts as one request). Call it before the
// server serves; without it a send frame is refused (send_error
// bad_request).
func (s *Server) AcceptSends(acc Accepter, limiter *web.Limiter) {
	s.acceptor, s.sendLimit = acc, limiter
}

// handleSend answers a send frame: a malformed one, one over the user's
// rate limit, or one the server does not take at once with a send_error;
// else it counts the send in flight and accepts it on a goroutine of its
// own, which answers it.
func (ss *session) handleSend(f clientMsg) {
	s := ss.srv
	if f.code != "" {
		ss.send(encodeSendError(f.ref, f.code, f.msg, 0))
		return
	}
	if s.acceptor == nil {
		ss.send(encodeSendError(f.ref, web.CodeBadRequest, "this server does not accept messages over the WebSocket; use POST /v1/messages", 0))
		return
	}
	if s.sendLimit != nil {
		if ok, wait := s.sendLimit.Allow(ss.user, time.Now()); !ok {
			ss.send(encodeSendError(f.ref, web.CodeRateLimited, "too many requests; nothing was accepted: send again after retry_after seconds",
				max(1, int(math.Ceil(wait.Seconds())))))
			return
		}
	}
	s.sendGate.RLock()
	if s.sendsClosed {
		s.sendGate.RUnlock()
		ss.send(encodeSendError(f.ref, web.CodeBackendUnavailable, "server shutting down; nothing was accepted", 1))
		return
	}
	s.sends.Add(1)
	s.sendGate.RUnlock()
	ss.sendMu.Lock()
	ss.inFlight++
	ss.sendMu.Unlock()
	go ss.acceptSend(f.ref, route.Message{Sender: ss.user, Recipient: f.send.Recipient, Payload: f.send.Payload,
		Type: f.send.Type, Ephemeral: f.send.Ephemeral, IdempotencyKey: f.send.IdempotencyKey})
}

// acceptSend accepts msg and answers the send of ref. The accept runs to
// its end even if the connection closes meanwhile (as a POST does once
// its body is read): what it accepts is delivered, and the client, left
// without an answer, sends again with the same idempotency key.
func (ss *session) acceptSend(ref string, msg route.Message) {
	s := ss.srv
	defer s.sends.Done()
	ctx := context.WithoutCancel(ss.ctx)
	var span trace.Span
	if s.tracer != nil {
		ctx, span = s.tracer.Start(ctx, "websocket send", trace.WithSpanKind(trace.SpanKindServer))
	}
	acc, err := s.acceptor.Accept(ctx, msg)
	var answer []byte
	if err != nil {
		e := route.Answer(err)
		if e.Code == web.CodeInternal {
			s.log.ErrorContext(ctx, "websocket send failed", "err", err)
		}
		answer = encodeSendError(ref, e.Code, e.Message, e.RetryAfter)
	} else {
		answer = encodeSent(ref, acc.ID, acc.CreatedAt)
	}
	if span != nil {
		if err == nil {
			span.SetAttributes(telemetry.AttrMessageID.String(acc.ID))
		}
		telemetry.End(span, err)
	}
	ss.send(answer)
	ss.sendAnswered()
}

// sendsFull reports whether the session has as many sends unanswered as
// it may: its reader stops.
func (ss *session) sendsFull() bool {
	ss.sendMu.Lock()
	defer ss.sendMu.Unlock()
	return ss.inFlight >= ss.srv.o.MaxSendsInFlight
}

// pauseReading stops the session's reading while its sends are at their
// bound: resume is called, once, when one is answered. It reports false
// when the sends are below the bound already (the caller reads on, and
// resume is never called).
func (ss *session) pauseReading(resume func()) bool {
	ss.sendMu.Lock()
	defer ss.sendMu.Unlock()
	if ss.inFlight < ss.srv.o.MaxSendsInFlight {
		return false
	}
	ss.resume = resume
	return true
}

// sendAnswered counts a send answered, and resumes the reading it paused.
func (ss *session) sendAnswered() {
	ss.sendMu.Lock()
	ss.inFlight--
	resume := ss.resume
	if ss.inFlight < ss.srv.o.MaxSendsInFlight {
		ss.resume = nil
	} else {
		resume = nil
	}
	ss.sendMu.Unlock()
	if resume != nil {
		resume()
	}
}
