package route

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Event is one routing event: a message to route, decoded and encoded.
type Event struct {
	// Envelope is the message. Its Payload is read only when Stored is
	// false (the store needs it); the wire form carries it otherwise.
	Envelope *envelope.Envelope
	// Data is the envelope's wire form (its JSON), which delivery events
	// and live frames carry as it is.
	Data []byte
	// Stored reports that the envelope is in the store already (Accept
	// stored it). Route stores the others first, unless ephemeral.
	Stored bool
	// Trace, when valid, is the message's place in its trace: the spans
	// of its routing are its children.
	Trace trace.SpanContext
}

// context returns ctx with the event's span as the current span.
func (ev *Event) context(ctx context.Context) context.Context {
	if !ev.Trace.IsValid() {
		return ctx
	}
	return trace.ContextWithSpanContext(ctx, ev.Trace)
}

// Route routes evs, in order, and returns one error per event (nil:
// routed). Envelopes not stored yet are stored first, with one store call
// (PutMessages, which checks tombstones: the bus may redeliver an event
// after its recipient acknowledged it; such a copy is not routed again).
// Then each recipient's presence is looked up (once per batch), each
// message delivered to this instance's sessions of its recipient and
// addressed to every other instance holding one (the delivery events of
// the batch published together), or a push asked for when there is none.
// Stored messages routed are marked routed (MarkDelay later, when
// deferMarks). Once one message of a recipient fails, the later ones of
// that recipient fail too, so that a retry keeps their order.
//
// An error wraps bus.ErrUnavailable when a backend it needs does not
// answer its ping either (an outage, not the message's fault).
func (c *Core) Route(ctx context.Context, evs []Event) []error {
	start := time.Now()
	errs := c.route(ctx, evs, c.marks != nil)
	c.countRouted(start, errs)
	return errs
}

// route is Route without the counting (its callers count their batches,
// what failed before routing included); deferMarks holds the routed marks
// back MarkDelay.
func (c *Core) route(ctx context.Context, evs []Event, deferMarks bool) []error {
	errs := make([]error, len(evs))
	ctx, cancel := context.WithTimeout(ctx, c.o.HandlerTimeout)
	defer cancel()

	// envs[i] is nil for an event that is not to be routed: one the store
	// knows acknowledged, or one that failed before it (decoding, in the
	// ingress consumer).
	envs := make([]*envelope.Envelope, len(evs))
	var toStore []*envelope.Envelope
	var toStoreAt []int
	for i := range evs {
		env := evs[i].Envelope
		envs[i] = env
		if !env.Ephemeral && !evs[i].Stored {
			toStore = append(toStore, env)
			toStoreAt = append(toStoreAt, i)
		}
	}
	if len(toStore) > 0 {
		spans := c.batchSpans(ctx, "store write", evs, toStoreAt)
		acked, err := c.store.PutMessages(ctx, toStore)
		endSpans(spans, err)
		if err != nil {
			err = outage(ctx, c.store, err)
			for i := range evs {
				errs[i] = fmt.Errorf("route: store %s: %w", evs[i].Envelope.ID, err)
			}
			return errs
		}
		for j, done := range acked { // acknowledged by the recipient before: handled, nothing to route
			if done {
				envs[toStoreAt[j]] = nil
			}
		}
	}
	// Route in order; the delivery events of the whole batch go out
	// together at the end.
	var out []delivery
	live := make([]bool, len(envs)) // routed to a live connection
	failed := map[string]error{}
	var down error                             // presence is down: no use asking it for the rest
	where := c.lookupAll(ctx, evs, envs, errs) // presence, looked up once per recipient per batch
	for i, env := range envs {
		if env == nil {
			continue
		}
		if err, ok := failed[env.Recipient]; ok {
			errs[i] = err
			continue
		}
		if down != nil { // the batch is held and tried again as a whole
			errs[i] = down
			continue
		}
		var err error
		if live[i], err = c.routeOne(evs[i].context(ctx), i, &evs[i], where, &out); err != nil {
			errs[i] = err
			failed[env.Recipient] = err
			if errors.Is(err, bus.ErrUnavailable) {
				down = err
			}
		}
	}
	if len(out) > 0 {
		ds := make([]bus.Delivery, len(out))
		for j, d := range out {
			ds[j] = d.Delivery
		}
		if err := c.bus.PublishDeliveries(ctx, ds); err != nil {
			err = fmt.Errorf("route: deliver: %w", err)
			for _, d := range out {
				if errs[d.index] == nil {
					errs[d.index] = err
				}
			}
		} else if c.m != nil {
			c.m.DeliveriesPublished.Add(float64(len(ds)))
		}
	}
	c.markRouted(ctx, envs, errs, deferMarks)
	for i, env := range envs {
		if live[i] && errs[i] == nil && !env.Ephemeral {
			c.watchUnacked(env)
		}
	}
	return errs
}

// countRouted counts a batch's results.
func (c *Core) countRouted(start time.Time, errs []error) {
	if c.m == nil {
		return
	}
	elapsed := time.Since(start).Seconds()
	for _, err := range errs {
		result := "ok"
		switch {
		case err == nil:
		case errors.Is(err, bus.ErrPermanent):
			result = "dead"
		default:
			result = "retry"
		}
		c.m.PipelineHandled.WithLabelValues(result).Inc()
		c.m.PipelineDuration.Observe(elapsed)
	}
}

// batchPresence is a Presence that looks up many users in one call.
type batchPresence interface {
	InstancesOf(ctx context.Context, users []string) ([][]string, error)
}

// lookupAll looks up the presence of the recipients of envs (those of
// events without an error) with one call, when the presence registry
// takes many users at once and there is more than one. What it could not
// look up, routeOne looks up one recipient at a time, with the errors
// that brings.
func (c *Core) lookupAll(ctx context.Context, evs []Event, envs []*envelope.Envelope, errs []error) map[string][]string {
	where := map[string][]string{}
	bp, ok := c.presence.(batchPresence)
	if !ok {
		return where
	}
	var users []string
	var first []int // the event that asks for each user
	seen := map[string]struct{}{}
	for i, env := range envs {
		if env == nil || errs[i] != nil {
			continue
		}
		if _, dup := seen[env.Recipient]; !dup {
			seen[env.Recipient] = struct{}{}
			users = append(users, env.Recipient)
			first = append(first, i)
		}
	}
	if len(users) < 2 {
		return where
	}
	spans := c.batchSpans(ctx, "presence lookup", evs, first)
	got, err := bp.InstancesOf(ctx, users)
	endSpans(spans, err)
	if err != nil {
		return where
	}
	for j, u := range users {
		where[u] = got[j]
	}
	return where
}

// batchSpans starts, when tracing is on, a span named name in the trace
// of each event evs[i], i in at: one call made for all of them at once.
func (c *Core) batchSpans(ctx context.Context, name string, evs []Event, at []int) []trace.Span {
	if c.tracer == nil {
		return nil
	}
	spans := make([]trace.Span, len(at))
	for j, i := range at {
		_, spans[j] = telemetry.Start(evs[i].context(ctx), c.tracer, name, trace.SpanKindInternal)
		spans[j].SetAttributes(telemetry.AttrMessageID.String(evs[i].Envelope.ID), telemetry.AttrCount.Int(len(at)))
	}
	return spans
}

// endSpans ends spans with the call's outcome.
func endSpans(spans []trace.Span, err error) {
	for _, s := range spans {
		telemetry.End(s, err)
	}
}

// delivery is a delivery event waiting to be published with its batch,
// and the index of its routing event.
type delivery struct {
	bus.Delivery
	index int
}

// routeOne routes the stored or ephemeral message of ev to the instances
// holding its recipient's connections: this instance's sessions in
// process, a delivery event added to out for each other instance; or asks
// for a push when there are none. live reports that there were some.
func (c *Core) routeOne(ctx context.Context, index int, ev *Event, where map[string][]string, out *[]delivery) (live bool, err error) {
	env := ev.Envelope
	instances, ok := where[env.Recipient]
	if !ok {
		sctx, span := telemetry.Start(ctx, c.tracer, "presence lookup", trace.SpanKindInternal)
		instances, err = c.presence.Instances(sctx, env.Recipient)
		if span != nil {
			span.SetAttributes(telemetry.AttrMessageID.String(env.ID), telemetry.AttrCount.Int(len(instances)))
			telemetry.End(span, err)
		}
		if err != nil {
			err = outage(ctx, c.presence, err)
			return false, fmt.Errorf("route: presence %s: %w", env.ID, err)
		}
		where[env.Recipient] = instances
	}
	for _, inst := range instances {
		if inst == c.o.Instance && c.o.Sessions != nil {
			lctx, span := telemetry.Start(ctx, c.tracer, "deliver local", trace.SpanKindInternal)
			c.o.Sessions.DeliverEncoded(lctx, env, ev.Data)
			if span != nil {
				span.SetAttributes(telemetry.AttrMessageID.String(env.ID), telemetry.AttrInstance.String(inst))
				span.End()
			}
			if c.m != nil {
				c.m.DeliveriesLocal.Inc()
			}
			continue
		}
		// Ordered per recipient within each instance's subscription; the
		// instance is part of the key so that events for other instances
		// (which a filtered subscription never sees) cannot hold it up.
		dm := &bus.Message{ID: env.ID + "." + inst, Data: ev.Data, OrderingKey: inst + "/" + env.Recipient, Trace: ev.Trace}
		*out = append(*out, delivery{Delivery: bus.Delivery{Instance: inst, Message: dm}, index: index})
	}
	if len(instances) == 0 && !env.Ephemeral && c.o.Notifier != nil {
		n := push.Notification{Recipient: env.Recipient, MessageID: env.ID, Type: env.Type}
		if c.tracer != nil {
			n.Trace = trace.SpanContextFromContext(ctx)
		}
		c.o.Notifier.Notify(n)
		if c.m != nil {
			c.m.PushRequested.Inc()
		}
	}
	return len(instances) > 0, nil
}

// pinger is a backend that can tell whether it answers at all.
type pinger interface {
	Ping(ctx context.Context) error
}

// pingTimeout bounds the ping that tells an outage from a failed call.
const pingTimeout = 2 * time.Second

// outage marks err, a failed call to backend, as bus.ErrUnavailable when
// the backend does not answer its ping either: the backend is down, the
// message is not at fault. A backend that answers its ping failed this
// call for another reason, which counts as a failed attempt.
func outage(ctx context.Context, backend any, err error) error {
	pg, ok := backend.(pinger)
	if !ok || ctx.Err() != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pingTimeout)
	defer cancel()
	if perr := pg.Ping(pctx); perr != nil {
		return fmt.Errorf("%w: %w", bus.ErrUnavailable, err)
	}
	return err
}

// markRouted records that the stored messages of the batch that were
// routed are, with one store call: at once, or with deferMarks MarkDelay
// later (see writeMarksUntil).
func (c *Core) markRouted(ctx context.Context, envs []*envelope.Envelope, errs []error, deferMarks bool) {
	var ids []string
	for i, env := range envs {
		if env != nil && !env.Ephemeral && errs[i] == nil {
			ids = append(ids, env.ID)
		}
	}
	if len(ids) == 0 {
		return
	}
	if deferMarks && c.marks.add(time.Now(), ids) {
		return
	}
	c.writeMarks(ctx, ids)
}
