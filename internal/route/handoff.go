package route

import (
	"context"
	"errors"
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

	// held are the events whose routing failed here and whose ingress
	// publish failed too (the bus is down): runHeld tries them again, with
	// backoff and at once when the bus recovers, so that the hand-off
	// itself never waits for the bus.
	heldMu sync.Mutex
	held   []Event
	kick   chan struct{} // wakes runHeld; made by runHandoff
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

// handoffLanes is how many batches of the hand-off are routed at once:
// each lane takes the events of the recipients that hash to it, in the
// order they were handed over, so that one slow batch (a publish waiting
// for its acknowledgement) holds up only its lane's recipients.
const handoffLanes = 4

// runHandoff routes what offer hands over, in batches of what is
// waiting, each recipient's in the order they were handed over (over
// handoffLanes lanes), until ctx is done; it then refuses further events
// and routes what is left before returning.
func (c *Core) runHandoff(ctx context.Context) {
	q := c.handoff
	q.heldMu.Lock()
	q.kick = make(chan struct{}, 1)
	q.heldMu.Unlock()
	// The held events are tried until the hand-off has drained.
	hctx, stopHeld := context.WithCancel(context.WithoutCancel(ctx))
	var held sync.WaitGroup
	held.Go(func() { c.runHeld(hctx) })
	defer func() {
		stopHeld()
		held.Wait()
	}()
	size := max(1, c.o.MaxBatch)
	// A lane routes what it is given until its channel closes; a batch
	// begun is routed to its end, shutdown or not (HandlerTimeout bounds
	// it).
	dctx := context.WithoutCancel(ctx)
	lanes := make([]chan Event, handoffLanes)
	var routing sync.WaitGroup
	for i := range lanes {
		lanes[i] = make(chan Event, size)
		routing.Go(func() {
			evs := make([]Event, 0, size)
			for {
				var ok bool
				if evs, ok = batch.Next(dctx, evs[:0], lanes[i], size); !ok {
					return
				}
				c.routeHandoff(dctx, evs)
				clear(evs)
			}
		})
	}
	dispatch := func(ev Event) {
		lanes[fnv32(ev.Envelope.Recipient)%handoffLanes] <- ev
	}
	for {
		select {
		case ev := <-q.ch:
			dispatch(ev)
			continue
		case <-ctx.Done():
		}
		break
	}
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	batch.Drain(q.ch, func(ev Event) bool {
		dispatch(ev)
		return true
	})
	for _, l := range lanes {
		close(l)
	}
	routing.Wait()
}

// fnv32 is the FNV-1a hash of s.
func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// slowHandoff is how long routing one hand-off batch may take before it
// is logged: the hand-off routes one batch at a time.
const slowHandoff = time.Second

// routeHandoff routes a batch handed over by offer; what fails goes to
// the ingress topic, as one batch, from runHeld (so that a bus that does
// not answer never holds up the hand-off).
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
	var failed []Event
	var cause error
	for i, err := range errs {
		if spans != nil {
			telemetry.End(spans[i], err)
		}
		if err == nil {
			routed++
			continue
		}
		failed = append(failed, evs[i])
		cause = err
	}
	if c.m != nil && routed > 0 {
		c.m.IngressLocal.WithLabelValues("routed").Add(float64(routed))
	}
	if d := time.Since(start); d >= slowHandoff {
		c.log.Warn("route: the in-process hand-off took long over one batch (a backend answered slowly)",
			"took", d.Round(time.Millisecond), "events", len(evs), "failed", len(failed), "err", cause)
	}
	if len(failed) > 0 {
		if c.m != nil {
			c.m.IngressLocal.WithLabelValues("requeued").Add(float64(len(failed)))
		}
		c.hold(failed, cause, true)
	}
}

// maxHeld bounds the events held for the bus; past it the oldest are left
// to the sweep (stored ones) or dropped (ephemeral ones).
func (c *Core) maxHeld() int { return max(c.o.HandoffQueue, 1) }

// hold adds evs to the held events and wakes runHeld; publish says they
// are to be published on the ingress topic first (their routing just
// failed), rather than routed again.
func (c *Core) hold(evs []Event, cause error, publish bool) {
	q := c.handoff
	q.heldMu.Lock()
	defer q.heldMu.Unlock()
	if !publish {
		// Tried already: they go before what came since, in their order.
		q.held = append(append(make([]Event, 0, len(evs)+len(q.held)), evs...), q.held...)
	} else {
		q.held = append(q.held, evs...)
	}
	if over := len(q.held) - c.maxHeld(); over > 0 {
		for _, ev := range q.held[:over] {
			c.deferToSweep(&ev, cause, errors.New("too many events held for the bus"))
		}
		q.held = append(q.held[:0], q.held[over:]...)
	}
	if q.kick != nil {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

// heldBackoff bounds the wait between two tries of the held events; the
// bus's recovery ends it at once.
const (
	heldMinBackoff = 100 * time.Millisecond
	heldMaxBackoff = 2 * time.Second
)

// runHeld tries the held events again until ctx is done: the first time
// it publishes them on the ingress topic (one batch), later it routes them
// again and publishes what still fails, with backoff from 100 ms to 2 s,
// and at once when the bus recovers. When ctx ends it publishes what is
// held once more; what the bus still refuses stays stored and unrouted,
// for the sweep.
func (c *Core) runHeld(ctx context.Context) {
	q := c.handoff
	recovered := make(chan struct{}, 1)
	if r, ok := c.bus.(recoverer); ok {
		defer r.OnRecovered(func() {
			select {
			case recovered <- struct{}{}:
			default:
			}
		})()
	}
	backoff := heldMinBackoff
	fresh := true // the events held were not tried again yet
	for {
		select {
		case <-ctx.Done():
			c.flushHeld(context.WithoutCancel(ctx))
			return
		case <-q.kick:
		case <-recovered:
		}
		for ctx.Err() == nil {
			q.heldMu.Lock()
			evs := q.held
			q.held = nil
			q.heldMu.Unlock()
			if len(evs) == 0 {
				backoff, fresh = heldMinBackoff, true
				break
			}
			left, err := c.retryHeld(ctx, evs, fresh)
			if len(left) == 0 {
				backoff, fresh = heldMinBackoff, true
				continue
			}
			c.hold(left, err, false)
			fresh = false
			// Events held meanwhile wait for the next try with these;
			// the bus's recovery ends the wait.
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
			case <-t.C:
			case <-recovered:
			}
			t.Stop()
			backoff = min(2*backoff, heldMaxBackoff)
		}
	}
}

// retryHeld routes evs again (unless publish, the first try after their
// routing failed) and publishes on the ingress topic, as one batch, those
// whose routing fails. It returns the events the bus refused.
func (c *Core) retryHeld(ctx context.Context, evs []Event, publish bool) ([]Event, error) {
	if !publish {
		errs := c.route(ctx, evs, c.marks != nil)
		var failed []Event
		for i, err := range errs {
			if err != nil {
				failed = append(failed, evs[i])
			}
		}
		routed := len(evs) - len(failed)
		if c.m != nil && routed > 0 {
			c.m.IngressLocal.WithLabelValues("routed").Add(float64(routed))
		}
		if len(failed) == 0 {
			return nil, nil
		}
		evs = failed
	}
	if err := c.requeue(ctx, evs); err != nil {
		return evs, err
	}
	return nil, nil
}

// flushHeld publishes what is held, once, at shutdown.
func (c *Core) flushHeld(ctx context.Context) {
	q := c.handoff
	q.heldMu.Lock()
	evs := q.held
	q.held = nil
	q.heldMu.Unlock()
	if len(evs) == 0 {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, c.o.HandlerTimeout)
	defer cancel()
	if err := c.requeue(pctx, evs); err != nil {
		for i := range evs {
			c.deferToSweep(&evs[i], err, err)
		}
	}
}

// recoverer is a bus that tells when it takes publishes again after
// failing them (bus.Bus).
type recoverer interface {
	OnRecovered(fn func()) (unregister func())
}

// batchPublisher is a bus that publishes many ingress events together
// (bus.Bus).
type batchPublisher interface {
	PublishIngressBatch(ctx context.Context, ms []*bus.Message) error
}

// requeue publishes events whose routing failed here on the ingress
// topic, as one batch when the bus takes batches, to be routed by any
// pipeline instance like any other.
func (c *Core) requeue(ctx context.Context, evs []Event) error {
	ms := make([]*bus.Message, len(evs))
	for i := range evs {
		env := evs[i].Envelope
		ms[i] = &bus.Message{ID: env.ID, Data: evs[i].Data, OrderingKey: env.Recipient, Trace: evs[i].Trace}
		if evs[i].Stored {
			ms[i].Attributes = storedAttrs
		}
	}
	if bp, ok := c.bus.(batchPublisher); ok {
		return bp.PublishIngressBatch(ctx, ms)
	}
	for _, m := range ms {
		if err := c.bus.PublishIngress(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// deferToSweep gives up on an event: a stored message stays stored and
// unrouted, for the sweep (which runs as soon as the bus recovers); an
// ephemeral one is lost.
func (c *Core) deferToSweep(ev *Event, cause, err error) {
	c.log.Warn("route: routing failed and the ingress topic refused the message; the sweep of unrouted messages routes it",
		"id", ev.Envelope.ID, "ephemeral", ev.Envelope.Ephemeral, "err", cause, "publish_err", err)
	if c.m != nil {
		c.m.RoutingDeferred.Inc()
	}
}
