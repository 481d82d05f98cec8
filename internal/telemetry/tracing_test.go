package telemetry_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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
			id := exportOne(t, telemetry.TracingConfig{Endpoint: rcv.URL, SampleRatio: 1, InstanceID: "inst-7"})
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
	exportOne(t, telemetry.TracingConfig{Endpoint: "http://127.0.0.1:1", SampleRatio: 1})
	got := rcv.Spans()
	if len(got) != 1 || got[0].Resource["service.name"] != "router-eu" {
		t.Fatalf("received %+v, want one span of service router-eu", got)
	}

	t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
	exportOne(t, telemetry.TracingConfig{SampleRatio: 1})
	if n := len(rcv.Spans()); n != 1 {
		t.Fatalf("OTEL_TRACES_SAMPLER=always_off: %d spans exported, want none more", n-1)
	}
}

// sample_ratio 0 samples no new trace, but follows a caller's sampled one
// (parent-based).
func TestSampleRatioIsParentBased(t *testing.T) {
	clearOTELEnv(t)
	rcv := otlptest.NewHTTP(t)
	ctx := context.Background()
	tp, err := telemetry.NewTracerProvider(ctx, telemetry.TracingConfig{Endpoint: rcv.URL, SampleRatio: 0})
	if err != nil {
		t.Fatal(err)
	}
	_, root := tp.Tracer("t").Start(ctx, "new trace")
	root.End()
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true})
	_, child := tp.Tracer("t").Start(trace.ContextWithRemoteSpanContext(ctx, parent), "sampled by the caller")
	child.End()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got := rcv.Spans()
	if len(got) != 1 || got[0].Name != "sampled by the caller" {
		t.Fatalf("received %+v, want only the span of the caller's sampled trace", got)
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
