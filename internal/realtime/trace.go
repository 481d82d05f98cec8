package realtime

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// maxTraced bounds the frames whose trace a session remembers for their
// ack.
const maxTraced = 1024

// startUpgrade starts the SERVER span of the WebSocket upgrade, continuing
// the caller's traceparent.
func (s *Server) startUpgrade(r *http.Request) (context.Context, trace.Span) {
	ctx := telemetry.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := s.tracer.Start(ctx, "GET /v1/connect", trace.WithSpanKind(trace.SpanKindServer))
	span.SetAttributes(
		attribute.String("http.request.method", r.Method),
		attribute.String("http.route", "/v1/connect"),
		attribute.String("network.protocol.name", "websocket"),
	)
	return ctx, span
}

// endUpgrade ends the upgrade's span with the answer's status (101 when
// the connection opened); a nil span is ignored.
func endUpgrade(span trace.Span, status int) {
	if span == nil {
		return
	}
	if status == 0 {
		status = http.StatusOK
	}
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
	span.End()
}

// statusRecorder remembers the status of an answer that refused an
// upgrade.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets the WebSocket library reach the connection to hijack.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// remember keeps the write span of a frame sent, for its ack.
func (ss *session) remember(id string, sc trace.SpanContext) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.traces == nil {
		ss.traces = make(map[string]trace.SpanContext)
	}
	if len(ss.traces) >= maxTraced {
		return
	}
	ss.traces[id] = sc
}

// startAck starts the span of a client's ack of ids: in the message's
// trace, as a child of its frame's write span, when one message is acked;
// else linked to each acked message's trace.
func (ss *session) startAck(ctx context.Context, ids []string) (context.Context, trace.Span) {
	var known []trace.SpanContext
	ss.mu.Lock()
	for _, id := range ids {
		if sc, ok := ss.traces[id]; ok {
			known = append(known, sc)
			delete(ss.traces, id)
		}
	}
	ss.mu.Unlock()
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
	switch {
	case len(ids) == 1 && len(known) == 1:
		ctx = trace.ContextWithSpanContext(ctx, known[0])
	case len(known) > 0:
		ctx = trace.ContextWithSpanContext(ctx, trace.SpanContext{})
		links := make([]trace.Link, len(known))
		for i, sc := range known {
			links[i] = trace.Link{SpanContext: sc}
		}
		opts = append(opts, trace.WithLinks(links...), trace.WithNewRoot())
	}
	ctx, span := ss.srv.tracer.Start(ctx, "websocket ack", opts...)
	span.SetAttributes(attribute.Int("messaging.batch.message_count", len(ids)))
	if len(ids) == 1 {
		span.SetAttributes(telemetry.AttrMessageID.String(ids[0]))
	}
	return ctx, span
}
