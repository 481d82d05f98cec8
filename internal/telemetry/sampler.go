package telemetry

import (
	"fmt"
	"math/rand/v2"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// NewSampler returns the service's sampler: it decides which traces are
// recorded, so that a client cannot make the service trace its requests.
//
//   - A span with no parent starts a new trace: sampled at ratio, by its
//     trace id (which the service generated).
//   - A span whose parent is local (made in this process) follows the
//     parent's decision, so that a trace is recorded whole or not at all.
//   - A CONSUMER span whose parent is remote follows the parent's decision:
//     that is the bus's processing span, and its parent is the producer
//     span this service wrote into the message's attributes, so a trace
//     stays whole across the bus and across instances. No other code starts
//     a CONSUMER span from a context it read from outside the service.
//   - Any other span whose parent is remote (an HTTP request's or a
//     WebSocket upgrade's SERVER span continuing a client's traceparent)
//     follows the caller's sampled flag only when trustRemote is set. Else
//     it is sampled at ratio by a random draw of the service's own: neither
//     the caller's sampled flag nor its trace id (which the caller chose,
//     and a ratio decision by trace id would let it pick one always
//     sampled) has any say. The span still joins the caller's trace id, so
//     a sampled request is found under the caller's trace.
//
// A ratio of 1 or more samples every such trace, 0 or less none.
func NewSampler(ratio float64, trustRemote bool) sdktrace.Sampler {
	s := sampler{root: sdktrace.TraceIDRatioBased(ratio), trustRemote: trustRemote}
	switch {
	case ratio >= 1:
		s.bound = 1 << 63
	case ratio > 0:
		s.bound = uint64(ratio * (1 << 63))
	}
	s.desc = fmt.Sprintf("RoutingSampler{ratio:%g,trustRemote:%t}", ratio, trustRemote)
	return s
}

type sampler struct {
	root        sdktrace.Sampler // new traces: by trace id
	bound       uint64           // untrusted remote parents: a draw below bound is sampled
	trustRemote bool
	desc        string
}

func (s sampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	psc := trace.SpanContextFromContext(p.ParentContext)
	if !psc.IsValid() {
		return s.root.ShouldSample(p)
	}
	sampled := psc.IsSampled()
	if psc.IsRemote() && !s.trustRemote && p.Kind != trace.SpanKindConsumer {
		sampled = rand.Uint64()>>1 < s.bound
	}
	if sampled {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: psc.TraceState()}
	}
	return sdktrace.SamplingResult{Decision: sdktrace.Drop, Tracestate: psc.TraceState()}
}

func (s sampler) Description() string { return s.desc }
