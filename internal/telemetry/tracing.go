package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ServiceName is the default service.name of the service's spans
// (OTEL_SERVICE_NAME overrides it).
const ServiceName = "routingservice"

// Propagator is the trace context format the service reads from requests
// and writes into bus messages: W3C traceparent and tracestate.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// TracingConfig is what NewTracerProvider needs.
type TracingConfig struct {
	// Config holds telemetry.* of config.yaml. Of it, OTLPEndpoint is the
	// OTLP endpoint used when neither OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
	// nor OTEL_EXPORTER_OTLP_ENDPOINT is set: a URL
	// (http://collector:4318 for http/protobuf, http://collector:4317 for
	// grpc; empty: the exporter's default, localhost). SampleRatio is the
	// ratio of traces sampled when OTEL_TRACES_SAMPLER is not set: new
	// traces, and requests that carry a caller's traceparent unless
	// TrustRemoteSampling is set (see NewSampler); a span whose parent
	// this service made follows its parent's decision, across the bus
	// too. TrustRemoteSampling follows the sampled flag of a caller's
	// traceparent (a request is recorded when the caller's trace is), as
	// a plain parent-based sampler does; off, a client cannot force its
	// requests to be traced. Traces itself is the caller's to read.
	Config
	// InstanceID is service.instance.id.
	InstanceID string
}

// NewTracerProvider makes an OpenTelemetry SDK tracer provider that
// exports spans over OTLP, in batches, configured by the standard
// OTEL_* environment variables (OTEL_EXPORTER_OTLP_PROTOCOL grpc or
// http/protobuf, the endpoints, OTEL_EXPORTER_OTLP_HEADERS,
// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and its
// argument, OTEL_BSP_*), with c filling in what they leave unset. Without
// OTEL_TRACES_SAMPLER the sampler is NewSampler's; that variable, when
// set, replaces it whole (a parentbased_* sampler then trusts callers'
// sampled flags). Its Shutdown flushes the spans still buffered.
func NewTracerProvider(ctx context.Context, c TracingConfig) (*sdktrace.TracerProvider, error) {
	exp, err := newExporter(ctx, c.OTLPEndpoint)
	if err != nil {
		return nil, err
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(
			attribute.String("service.name", ServiceName),
			attribute.String("service.version", Version()),
			attribute.String("service.instance.id", c.InstanceID),
		),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil && res == nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithBatcher(exp), sdktrace.WithResource(res)}
	if os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		opts = append(opts, sdktrace.WithSampler(NewSampler(c.SampleRatio, c.TrustRemoteSampling)))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

// newExporter makes the OTLP span exporter for the protocol named by
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL
// (default http/protobuf, as the specification says). The exporters read
// the other OTEL_EXPORTER_OTLP_* variables themselves.
func newExporter(ctx context.Context, endpoint string) (sdktrace.SpanExporter, error) {
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	useEndpoint := endpoint != "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == ""
	switch proto {
	case "", "http/protobuf":
		var opts []otlptracehttp.Option
		if useEndpoint {
			opts = append(opts, otlptracehttp.WithEndpointURL(strings.TrimSuffix(endpoint, "/")+"/v1/traces"))
		}
		return otlptracehttp.New(ctx, opts...)
	case "grpc":
		var opts []otlptracegrpc.Option
		if useEndpoint {
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
		}
		return otlptracegrpc.New(ctx, opts...)
	default:
		return nil, errors.New("OTEL_EXPORTER_OTLP_PROTOCOL: want grpc or http/protobuf, got " + proto)
	}
}

// Version is the service's version: the main module's version from the
// build information, or its VCS revision, or "devel".
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return "devel"
}

// Tracer returns tp's tracer for the named component, or nil when tp is
// nil or the API's no-op provider: callers skip their spans then, which
// keeps the cost of tracing turned off at a nil check.
func Tracer(tp trace.TracerProvider, component string) trace.Tracer {
	if tp == nil {
		return nil
	}
	if _, ok := tp.(noop.TracerProvider); ok {
		return nil
	}
	return tp.Tracer("github.com/go-routing-service/routingservice/" + component)
}

// Start starts a span named name of kind under ctx with tracer, or returns
// ctx and a nil span when tracer is nil (tracing off): callers set
// attributes only on a non-nil span, so that tracing off costs a nil check.
func Start(ctx context.Context, tracer trace.Tracer, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	if tracer == nil {
		return ctx, nil
	}
	return tracer.Start(ctx, name, trace.WithSpanKind(kind))
}

// End records err, when not nil, on span and ends it; a nil span is
// ignored.
func End(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Span attributes the service's spans share (OpenTelemetry messaging
// conventions, and the service's own under routing.*). Payloads, tokens,
// push endpoints and user URNs are never recorded.
const (
	AttrMessageID = attribute.Key("messaging.message.id")
	AttrInstance  = attribute.Key("routing.instance")
	AttrOutcome   = attribute.Key("routing.outcome")
	AttrCount     = attribute.Key("routing.count")
	AttrPlatform  = attribute.Key("routing.push.platform")
)
