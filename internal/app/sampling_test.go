package app_test

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"slices"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/telemetry/otlptest"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// A client sending a traceparent with the sampled flag set cannot make the
// service trace its requests: at telemetry.sample_ratio 0 neither its send
// nor its WebSocket upgrade is recorded, unless
// telemetry.trust_remote_sampling is on. The instance runs the tracer
// provider its configuration sets up, exporting to a collector on loopback.
func TestClientCannotForceTracing(t *testing.T) {
	for _, trust := range []bool{false, true} {
		t.Run(fmt.Sprintf("trust_remote_sampling=%t", trust), func(t *testing.T) {
			for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME"} {
				t.Setenv(k, "")
			}
			rcv := otlptest.NewHTTP(t)
			ta := startApp(t, func(c *config.Config) {
				c.Telemetry.Traces = "otlp"
				c.Telemetry.OTLPEndpoint = rcv.URL
				c.Telemetry.SampleRatio = 0
				c.Telemetry.TrustRemoteSampling = trust
			})
			var tid trace.TraceID
			_, _ = rand.Read(tid[:])
			caller := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled, Remote: true})
			traced := &http.Client{Transport: traceparentTransport{caller}}

			bob := ta.client(t, "urn:sm:user:bob-forced")
			bob.HTTP = traced
			conn, err := bob.Connect(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			connected(t, ta, 1)
			alice := ta.client(t, "urn:sm:user:alice-forced")
			alice.HTTP = traced
			acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob-forced", Payload: []byte("x")})
			if err != nil {
				t.Fatal(err)
			}
			if env := next(t, conn); env.ID != acc.ID {
				t.Fatalf("received %s, sent %s", env.ID, acc.ID)
			}
			conn.Close()
			ta.stop() // flushes every span still buffered

			spans := rcv.Spans()
			if !trust {
				for _, s := range spans {
					t.Errorf("span %q recorded (trace %s)", s.Name, s.TraceID)
				}
				return
			}
			var names []string
			for _, s := range spans {
				if s.TraceID == caller.TraceID().String() {
					names = append(names, s.Name)
				}
			}
			for _, want := range []string{"GET /v1/connect", "POST /v1/messages", "accept", "store write"} {
				if !slices.Contains(names, want) {
					t.Errorf("the caller's trace lacks %q; it has %q", want, names)
				}
			}
		})
	}
}

// requestsSampled samples every SERVER span that does not continue a span
// of this process (as the service's own draw does for some requests) and
// leaves every other decision to the wrapped sampler.
type requestsSampled struct{ sdktrace.Sampler }

func (s requestsSampled) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	psc := trace.SpanContextFromContext(p.ParentContext)
	if p.Kind == trace.SpanKindServer && (!psc.IsValid() || psc.IsRemote()) {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: psc.TraceState()}
	}
	return s.Sampler.ShouldSample(p)
}

// With the service's sampler at ratio 0 and callers untrusted, a request
// that was sampled stays one whole trace across the ingress topic: the
// bus's processing span follows the trace context the service wrote into
// the message, though the ratio alone would drop it.
func TestOneTraceAcrossTheBusWithTheServiceSampler(t *testing.T) {
	rec, _ := newRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(requestsSampled{telemetry.NewSampler(0, false)}))
	ta := startAppWith(t, func(c *config.Config) { c.Pipeline.LocalHandoff = false }, app.Options{TracerProvider: tp})
	caller, _ := sendTraced(t, tp, ta, ta)
	hops := append(append(slices.Clone(acceptHops),
		hop{"deliver local", "process ingress"},
		hop{"websocket write", "deliver local"}), ackHops...)
	checkTrace(t, rec, caller, hops)
}
