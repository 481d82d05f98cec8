package pipeline

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// DefaultLocalQueue is how many accepted messages the in-process hand-off
// holds before the API sends routing events over the ingress topic again.
const DefaultLocalQueue = 4096

// localQueue carries the routing events of messages this instance's API
// stored to this instance's pipeline, without the ingress topic.
type localQueue struct {
	ch     chan localMsg
	mu     sync.RWMutex // held for writing once, to close
	closed bool
}

type localMsg struct {
	m   *bus.Message
	env *envelope.Envelope
}

// Offer hands the routing event m of env, stored by this instance's API
// already, to this pipeline. It does not block: it reports false when the
// hand-off is full or stopped, and the caller publishes m on the ingress
// topic instead. A message handed off and lost with the process is stored
// and unrouted: the sweep of unrouted messages routes it (Reroute). A
// message whose routing fails here goes to the ingress topic (Requeue), to
// be retried like any other.
func (p *Pipeline) Offer(m *bus.Message, env *envelope.Envelope) bool {
	q := p.local
	if q == nil {
		return false
	}
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return false
	}
	select {
	case q.ch <- localMsg{m: m, env: env}:
		return true
	default:
		if p.o.Metrics != nil {
			p.o.Metrics.IngressLocal.WithLabelValues("full").Inc()
		}
		return false
	}
}

// RunLocal routes what Offer hands over, in batches of what is waiting,
// in the order it was handed over, until ctx is done; it then refuses
// further hand-offs and routes what is left before returning.
func (p *Pipeline) RunLocal(ctx context.Context) {
	q := p.local
	if q == nil {
		return
	}
	batch := make([]localMsg, 0, max(1, p.o.MaxBatch))
	for {
		select {
		case lm := <-q.ch:
			batch = p.fill(append(batch[:0], lm))
			p.routeLocal(ctx, batch)
		case <-ctx.Done():
			q.mu.Lock()
			q.closed = true
			q.mu.Unlock()
			dctx := context.WithoutCancel(ctx)
			for len(q.ch) > 0 {
				p.routeLocal(dctx, p.fill(batch[:0]))
			}
			return
		}
	}
}

// fill adds what is waiting to batch, up to the batch size.
func (p *Pipeline) fill(batch []localMsg) []localMsg {
	for len(batch) < cap(batch) {
		select {
		case lm := <-p.local.ch:
			batch = append(batch, lm)
		default:
			return batch
		}
	}
	return batch
}

// routeLocal routes a batch handed over by Offer; what fails goes to the
// ingress topic.
func (p *Pipeline) routeLocal(ctx context.Context, batch []localMsg) {
	if len(batch) == 0 {
		return
	}
	ms := make([]*bus.Message, len(batch))
	envs := make([]*envelope.Envelope, len(batch))
	var spans []trace.Span
	if p.tracer != nil {
		spans = make([]trace.Span, len(batch))
	}
	for i, lm := range batch {
		ms[i], envs[i] = lm.m, lm.env
		if spans != nil {
			var sctx context.Context
			sctx, spans[i] = telemetry.Start(bus.ContextOf(ctx, lm.m), p.tracer, "route local", trace.SpanKindInternal)
			spans[i].SetAttributes(telemetry.AttrMessageID.String(lm.env.ID), telemetry.AttrCount.Int(len(batch)))
			lm.m.Trace = trace.SpanContextFromContext(sctx)
		}
	}
	errs := p.handleDecoded(ctx, ms, envs, p.marks != nil)
	routed := 0
	for i, err := range errs {
		if spans != nil {
			telemetry.End(spans[i], err)
		}
		if err == nil {
			routed++
			continue
		}
		p.requeue(ctx, ms[i], err)
	}
	if p.o.Metrics != nil && routed > 0 {
		p.o.Metrics.IngressLocal.WithLabelValues("routed").Add(float64(routed))
	}
}

// requeue sends a message whose local routing failed to the ingress
// topic; if that fails too, the message stays stored and unrouted, for the
// sweep.
func (p *Pipeline) requeue(ctx context.Context, m *bus.Message, cause error) {
	if p.o.Metrics != nil {
		p.o.Metrics.IngressLocal.WithLabelValues("requeued").Inc()
	}
	if p.o.Requeue == nil {
		p.log.Warn("pipeline: routing failed; the sweep of unrouted messages routes it", "id", m.ID, "err", cause)
		return
	}
	if err := p.o.Requeue(ctx, m); err != nil {
		p.log.Warn("pipeline: routing failed and the ingress topic refused the message; the sweep of unrouted messages routes it",
			"id", m.ID, "err", cause, "publish_err", err)
		if p.o.Metrics != nil {
			p.o.Metrics.RoutingDeferred.Inc()
		}
	}
}
