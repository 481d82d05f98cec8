package api

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// Server spans continue the caller's traceparent and are named by route,
// never by the raw path; the operations endpoints get none.
func TestServerSpansByRoute(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	rt := NewRouter(nil, nil)
	rt.HandleFunc(http.MethodGet, "/v1/messages", func(w http.ResponseWriter, r *http.Request) {})
	MountOps(rt, Ops{})
	h := Trace(rt, rt, tp)
	caller := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{7}, SpanID: trace.SpanID{9}, TraceFlags: trace.FlagsSampled})
	for _, path := range []string{"/v1/messages?limit=5", "/no/such/urn:sm:user:x", "/healthz"} {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(req.Context(), caller), propagation.HeaderCarrier(req.Header))
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2 (none for /healthz)", len(spans))
	}
	for i, want := range []string{"GET /v1/messages", "GET unknown"} {
		s := spans[i]
		if s.Name() != want || s.SpanKind() != trace.SpanKindServer || s.Parent().SpanID() != caller.SpanID() || s.SpanContext().TraceID() != caller.TraceID() {
			t.Errorf("span %d: %q kind %v parent %s, want %q continuing the caller's trace", i, s.Name(), s.SpanKind(), s.Parent().SpanID(), want)
		}
	}
	if Trace(rt, rt, nil) != http.Handler(rt) {
		t.Error("with tracing off the handler is wrapped")
	}
}
