package telemetry_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/telemetry/otlptest"
)

// clearOTELEnv unsets the OTEL_* variables the tests rely on.
func clearOTELEnv(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES"} {
		t.Setenv(k, "")
	}
}

// exportOne makes a provider, records one span, shuts it down (which
// flushes) and returns the span's trace id.
func exportOne(t *testing.T, c telemetry.TracingConfig) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tp, err := telemetry.NewTracerProvider(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("test").Start(ctx, "one span")
	span.End()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown (flush): %v", err)
	}
	return span.SpanContext().TraceID().String()
}

func TestOTLPExportBothProtocols(t *testing.T) {
	for _, proto := range []string{"http/protobuf", "grpc"} {
		t.Run(proto, func(t *testing.T) {
			clearOTELEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", proto)
			rcv := otlptest.NewHTTP(t)
			if proto == "grpc" {
				rcv = otlptest.NewGRPC(t)
			}
			id := exportOne(t, telemetry.TracingConfig{Config: telemetry.Config{OTLPEndpoint: rcv.URL, SampleRatio: 1}, InstanceID: "inst-7"})
			got := rcv.Spans()
			if len(got) != 1 || got[0].Name != "one span" || got[0].TraceID != id {
				t.Fatalf("received %+v, want the span of trace %s", got, id)
			}
			res := got[0].Resource
			if res["service.name"] != telemetry.ServiceName || res["service.instance.id"] != "inst-7" || res["service.version"] == "" {
				t.Errorf("resource %v: want service name, version and instance id", res)
			}
		})
	}
}

// The standard variables win over the configuration: the endpoint, the
// service name and the sampler.
func TestOTLPEnvironmentWins(t *testing.T) {
	clearOTELEnv(t)
	rcv := otlptest.NewHTTP(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.URL)
	t.Setenv("OTEL_SERVICE_NAME", "router-eu")
	exportOne(t, telemetry.TracingConfig{Config: telemetry.Config{OTLPEndpoint: "http://127.0.0.1:1", SampleRatio: 1}})
	got := rcv.Spans()
	if len(got) != 1 || got[0].Resource["service.name"] != "router-eu" {
		t.Fatalf("received %+v, want one span of service router-eu", got)
	}

	t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
	exportOne(t, telemetry.TracingConfig{Config: telemetry.Config{SampleRatio: 1}})
	if n := len(rcv.Spans()); n != 1 {
		t.Fatalf("OTEL_TRACES_SAMPLER=always_off: %d spans exported, want none more", n-1)
	}
}

// A request that carries a caller's sampled traceparent is not traced at
// sample_ratio 0: the caller's flag is followed only with
// TrustRemoteSampling. The provider is the one the service runs, its spans
// exported over OTLP.
func TestCallerCannotForceSampling(t *testing.T) {
	for _, trust := range []bool{false, true} {
		t.Run(fmt.Sprintf("trust_remote_sampling=%t", trust), func(t *testing.T) {
			clearOTELEnv(t)
			rcv := otlptest.NewHTTP(t)
			ctx := context.Background()
			tp, err := telemetry.NewTracerProvider(ctx, telemetry.TracingConfig{Config: telemetry.Config{OTLPEndpoint: rcv.URL, SampleRatio: 0, TrustRemoteSampling: trust}})
			if err != nil {
				t.Fatal(err)
			}
			_, root := tp.Tracer("t").Start(ctx, "new trace")
			root.End()
			caller := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true})
			_, req := tp.Tracer("t").Start(trace.ContextWithRemoteSpanContext(ctx, caller), "POST /v1/messages", trace.WithSpanKind(trace.SpanKindServer))
			req.End()
			if err := tp.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			got := rcv.Spans()
			if !trust {
				if len(got) != 0 {
					t.Fatalf("exported %+v, want nothing", got)
				}
				return
			}
			if len(got) != 1 || got[0].Name != "POST /v1/messages" || got[0].TraceID != caller.TraceID().String() {
				t.Fatalf("exported %+v, want only the request's span, in the caller's trace", got)
			}
		})
	}
}

// Each kind of parent gets the decision NewSampler documents.
func TestSamplerDecisions(t *testing.T) {
	remote := func(flags trace.TraceFlags) trace.SpanContext {
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{7}, SpanID: trace.SpanID{8}, TraceFlags: flags, Remote: true})
	}
	local := func(flags trace.TraceFlags) trace.SpanContext {
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{7}, SpanID: trace.SpanID{9}, TraceFlags: flags})
	}
	const (
		server   = trace.SpanKindServer
		consumer = trace.SpanKindConsumer
		internal = trace.SpanKindInternal
	)
	for _, c := range []struct {
		name   string
		ratio  float64
		trust  bool
		parent trace.SpanContext // invalid: none
		kind   trace.SpanKind
		want   bool
	}{
		{"new trace, ratio 0", 0, false, trace.SpanContext{}, server, false},
		{"new trace, ratio 1", 1, false, trace.SpanContext{}, server, true},
		{"client sampled, ratio 0", 0, false, remote(trace.FlagsSampled), server, false},
		{"client sampled, ratio 0, trusted", 0, true, remote(trace.FlagsSampled), server, true},
		{"client not sampled, ratio 1", 1, false, remote(0), server, true},
		{"client not sampled, ratio 1, trusted", 1, true, remote(0), server, false},
		{"remote sampled, internal span, ratio 0", 0, false, remote(trace.FlagsSampled), internal, false},
		{"bus sampled, ratio 0", 0, false, remote(trace.FlagsSampled), consumer, true},
		{"bus not sampled, ratio 1", 1, false, remote(0), consumer, false},
		{"local sampled, ratio 0", 0, false, local(trace.FlagsSampled), internal, true},
		{"local not sampled, ratio 1", 1, false, local(0), internal, false},
		{"local sampled server span, ratio 0", 0, false, local(trace.FlagsSampled), server, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(telemetry.NewSampler(c.ratio, c.trust)), sdktrace.WithSpanProcessor(rec))
			ctx := context.Background()
			if c.parent.IsValid() {
				ctx = trace.ContextWithSpanContext(ctx, c.parent)
			}
			_, span := tp.Tracer("t").Start(ctx, "span", trace.WithSpanKind(c.kind))
			span.End()
			if got := span.SpanContext().IsSampled(); got != c.want {
				t.Errorf("sampled = %v, want %v", got, c.want)
			}
			if got := len(rec.Ended()) == 1; got != c.want {
				t.Errorf("recorded = %v, want %v", got, c.want)
			}
			if c.parent.IsValid() && span.SpanContext().TraceID() != c.parent.TraceID() {
				t.Errorf("trace id %s, want the parent's %s", span.SpanContext().TraceID(), c.parent.TraceID())
			}
		})
	}
}

// A ratio decision by trace id would let a client pick a trace id that is
// always sampled (low bits zero); the service's draw does not look at it.
func TestCallerCannotPickASampledTraceID(t *testing.T) {
	const ratio = 1e-12
	chosen := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{15: 1}, SpanID: trace.SpanID{1}, Remote: true})
	p := sdktrace.SamplingParameters{
		ParentContext: trace.ContextWithRemoteSpanContext(context.Background(), chosen),
		TraceID:       chosen.TraceID(),
		Name:          "POST /v1/messages",
		Kind:          trace.SpanKindServer,
	}
	// The attack: by trace id, this one is always sampled.
	if d := sdktrace.TraceIDRatioBased(ratio).ShouldSample(p).Decision; d != sdktrace.RecordAndSample {
		t.Fatalf("a ratio sampler by trace id decides %v: the test shows nothing", d)
	}
	s := telemetry.NewSampler(ratio, false)
	for range 1000 {
		if d := s.ShouldSample(p).Decision; d != sdktrace.Drop {
			t.Fatalf("the chosen trace id was sampled (%v) at ratio %g", d, ratio)
		}
	}
}

func TestTracerIsNilWhenOff(t *testing.T) {
	if telemetry.Tracer(nil, "x") != nil {
		t.Error("a nil provider gave a tracer")
	}
	if telemetry.Tracer(sdktrace.NewTracerProvider(), "x") == nil {
		t.Error("an SDK provider gave no tracer")
	}
}

func TestLogsCarryTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(telemetry.WithTraceIDs(slog.NewTextHandler(&buf, nil))).With("role", "api")
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "op")
	log.InfoContext(ctx, "inside")
	span.End()
	log.Info("outside")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines %q", lines)
	}
	sc := span.SpanContext()
	if !strings.Contains(lines[0], "trace_id="+sc.TraceID().String()) || !strings.Contains(lines[0], "span_id="+sc.SpanID().String()) || !strings.Contains(lines[0], "role=api") {
		t.Errorf("line inside the span: %q", lines[0])
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("line outside any span: %q", lines[1])
	}
}
