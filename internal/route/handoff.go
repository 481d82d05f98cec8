package route

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/batch"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// handoff carries the routing events of the messages this instance's
// Accept stored to this instance's routing, in process, without the
// ingress topic.
type handoff struct {
	ch     chan Event
	mu     sync.RWMutex // held for writing once, to close
	closed bool
}

// offer hands ev (stored already, or ephemeral) to this instance's routing. It does not
// block: it reports false when the hand-off is full or stopped, and the
// caller publishes the event on the ingress topic instead. An event
// handed off and lost with the process leaves its message stored and
// unrouted: the sweep routes it. One whose routing fails here goes to the
// ingress topic (requeue), to be retried like any other.
func (c *Core) offer(ev Event) bool {
	q := c.handoff
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return false
	}
	select {
	case q.ch <- ev:
		return true
	default:
		if c.m != nil {
			c.m.IngressLocal.WithLabelValues("full").Inc()
		}
		return false
	}
}

// runHandoff routes what offer hands over, in batches of what is
// waiting, in the order it was handed over, until ctx is done; it then
// refuses further events and routes what is left before returning.
func (c *Core) runHandoff(ctx context.Context) {
	q := c.handoff
	size := max(1, c.o.MaxBatch)
	evs := make([]Event, 0, size)
	for {
		var ok bool
		if evs, ok = batch.Next(ctx, evs[:0], q.ch, size); !ok {
			break
		}
		c.routeHandoff(ctx, evs)
		clear(evs)
	}
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	dctx := context.WithoutCancel(ctx)
	for len(q.ch) > 0 {
		evs, _ = batch.Fill(evs[:0], q.ch, size)
		c.routeHandoff(dctx, evs)
		clear(evs)
	}
}

// routeHandoff routes a batch handed over by offer; what fails goes to
// the ingress topic.
func (c *Core) routeHandoff(ctx context.Context, evs []Event) {
	start := time.Now()
	var spans []trace.Span
	if c.tracer != nil {
		spans = make([]trace.Span, len(evs))
		for i := range evs {
			var sctx context.Context
			sctx, spans[i] = telemetry.Start(evs[i].context(ctx), c.tracer, "route local", trace.SpanKindInternal)
			spans[i].SetAttributes(telemetry.AttrMessageID.String(evs[i].Envelope.ID), telemetry.AttrCount.Int(len(evs)))
			evs[i].Trace = trace.SpanContextFromContext(sctx)
		}
	}
	errs := c.route(ctx, evs, c.marks != nil)
	c.countRouted(start, errs)
	routed := 0
	for i, err := range errs {
		if spans != nil {
			telemetry.End(spans[i], err)
		}
		if err == nil {
			routed++
			continue
		}
		c.requeue(ctx, &evs[i], err)
	}
	if c.m != nil && routed > 0 {
		c.m.IngressLocal.WithLabelValues("routed").Add(float64(routed))
	}
}

// requeue publishes an event whose routing failed here on the ingress
// topic; if that fails too, the message stays stored and unrouted, for
// the sweep.
func (c *Core) requeue(ctx context.Context, ev *Event, cause error) {
	if c.m != nil {
		c.m.IngressLocal.WithLabelValues("requeued").Inc()
	}
	env := ev.Envelope
	m := &bus.Message{ID: env.ID, Data: ev.Data, OrderingKey: env.Recipient, Trace: ev.Trace}
	if ev.Stored {
		m.Attributes = storedAttrs
	}
	if err := c.bus.PublishIngress(ctx, m); err != nil {
		c.log.Warn("route: routing failed and the ingress topic refused the message; the sweep of unrouted messages routes it",
			"id", env.ID, "err", cause, "publish_err", err)
		if c.m != nil {
			c.m.RoutingDeferred.Inc()
		}
	}
}
