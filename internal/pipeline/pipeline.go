// Package pipeline consumes the ingress subscription: for each accepted
// envelope it stores it (store first), looks up the recipient's presence,
// addresses a delivery event to each instance that holds a connection of
// theirs, and asks for a push when they have none. The ingress message is
// acked only when all of that succeeded.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Store stores envelopes (idempotent on id) and keeps track of which were
// routed.
type Store interface {
	PutMessages(ctx context.Context, envs []*envelope.Envelope) (acked []bool, err error)
	MarkRouted(ctx context.Context, ids []string) error
	Unrouted(ctx context.Context, before time.Time, limit int) ([]*envelope.Envelope, error)
	PendingTotal(ctx context.Context) (int64, error)
	Stored(ctx context.Context, ids []string) ([]string, error)
}

// Presence tells which instances hold a user's connections. One that
// also has InstancesOf(ctx, users) ([][]string, error) (presence.Presence
// has) is asked about a batch's recipients with one call.
type Presence interface {
	Instances(ctx context.Context, user string) ([]string, error)
}

// Bus receives ingress in batches and publishes delivery events in
// batches (bus.Bus over any driver).
type Bus interface {
	ReceiveIngressBatch(ctx context.Context, max int, h bus.BatchHandler) error
	PublishDeliveries(ctx context.Context, ds []bus.Delivery) error
}

// Notifier wakes an offline recipient's devices. Notify must not block.
type Notifier interface {
	Notify(n push.Notification)
}

// LocalDelivery hands an envelope to this instance's own connections; ctx
// carries the message's trace.
type LocalDelivery interface {
	Deliver(ctx context.Context, env *envelope.Envelope)
}

// Options configures the pipeline.
type Options struct {
	// Instance is this instance's id; with Local set, delivery events for it
	// skip the bus.
	Instance       string
	Local          LocalDelivery
	Notifier       Notifier
	HandlerTimeout time.Duration
	// MaxBatch bounds the messages handled (and stored) together when the
	// bus delivers in batches; <= 1 handles one at a time.
	MaxBatch int
	// UnackedAfter, when positive (and Notifier is set), is how long a
	// stored message routed to a live connection may stay unacknowledged
	// before its recipient gets a push anyway (see PushUnacked).
	UnackedAfter time.Duration
	// UnackedMax bounds the messages watched for that at a time
	// (DefaultUnackedMax when <= 0); beyond it they are not watched.
	UnackedMax int
	// MarkDelay, when positive, holds the routed marks of a batch back
	// that long (written by WriteMarks); it must stay well below the
	// reroute sweep's age, or the sweep routes those messages again.
	MarkDelay time.Duration
	// LocalQueue, when positive, lets this instance's API hand the routing
	// events of the messages it stored to this pipeline in process (Offer)
	// rather than over the ingress topic, up to that many waiting.
	LocalQueue int
	// Requeue publishes on the ingress topic a message handed over by Offer
	// whose routing failed here, to be retried there.
	Requeue func(ctx context.Context, m *bus.Message) error
	Logger  *slog.Logger
	Metrics *telemetry.Metrics
	// TracerProvider, when set, traces each message's hops through the
	// pipeline (store write, presence lookup, local hand-off, push
	// request) under its processing span.
	TracerProvider trace.TracerProvider
}

// Pipeline is the ingress consumer.
type Pipeline struct {
	o        Options
	store    Store
	presence Presence
	bus      Bus
	log      *slog.Logger
	tracer   trace.Tracer     // nil when tracing is off
	unacked  *unackedSchedule // nil when unacknowledged messages are not watched
	marks    *deferredMarks   // nil when routed marks are written at once
	local    *localQueue      // nil without the in-process hand-off
}

// New returns a pipeline.
func New(o Options, st Store, pr Presence, b Bus) *Pipeline {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.HandlerTimeout <= 0 {
		o.HandlerTimeout = 10 * time.Second
	}
	if o.UnackedMax <= 0 {
		o.UnackedMax = DefaultUnackedMax
	}
	p := &Pipeline{o: o, store: st, presence: pr, bus: b, log: o.Logger, tracer: telemetry.Tracer(o.TracerProvider, "pipeline")}
	if o.UnackedAfter > 0 && o.Notifier != nil {
		p.unacked = &unackedSchedule{limit: o.UnackedMax}
	}
	if o.MarkDelay > 0 {
		p.marks = &deferredMarks{}
	}
	if o.LocalQueue > 0 {
		p.local = &localQueue{ch: make(chan localMsg, o.LocalQueue)}
	}
	return p
}

// Run consumes the ingress subscription until ctx is done, in batches of
// what is waiting (one store commit per batch).
func (p *Pipeline) Run(ctx context.Context) error {
	return p.bus.ReceiveIngressBatch(ctx, max(1, p.o.MaxBatch), p.HandleBatch)
}

// Handle processes one ingress message. An undecodable or invalid envelope
// is a permanent failure (dead-lettered at once); a store or presence
// error while that backend does not answer its ping is an outage
// (bus.ErrUnavailable: the bus holds the message and tries it again,
// without counting an attempt, until the backend is back); other errors
// are returned for a retry.
func (p *Pipeline) Handle(ctx context.Context, m *bus.Message) error {
	return p.HandleBatch(ctx, []*bus.Message{m})[0]
}

// HandleBatch processes ingress messages in order: it stores the batch's
// envelopes with one store call, then routes each. It returns one error per
// message (see Handle).
func (p *Pipeline) HandleBatch(ctx context.Context, ms []*bus.Message) []error {
	return p.handleBatch(ctx, ms, p.marks != nil)
}

// handleBatch is HandleBatch; deferMarks holds the routed marks back
// (MarkDelay) rather than writing them with the batch.
func (p *Pipeline) handleBatch(ctx context.Context, ms []*bus.Message, deferMarks bool) []error {
	return p.handleDecoded(ctx, ms, nil, deferMarks)
}

// handleDecoded is handleBatch with the messages' envelopes decoded
// already, when decoded is not nil (decoded[i] is ms[i]'s).
func (p *Pipeline) handleDecoded(ctx context.Context, ms []*bus.Message, decoded []*envelope.Envelope, deferMarks bool) []error {
	start := time.Now()
	errs := make([]error, len(ms))
	defer func() {
		if p.o.Metrics == nil {
			return
		}
		elapsed := time.Since(start).Seconds()
		for _, err := range errs {
			result := "ok"
			switch {
			case err == nil:
			case isPermanent(err):
				result = "dead"
			default:
				result = "retry"
			}
			p.o.Metrics.PipelineHandled.WithLabelValues(result).Inc()
			p.o.Metrics.PipelineDuration.Observe(elapsed)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, p.o.HandlerTimeout)
	defer cancel()

	// Envelopes the API stored already (the routing events it publishes
	// say so) are only routed; others (published by an older version, or
	// by hand) are stored first, with one store call for the batch:
	// PutMessages, which checks tombstones, since the bus may deliver such
	// an event again after the recipient acknowledged its envelope.
	envs := make([]*envelope.Envelope, len(ms))
	var toStore []*envelope.Envelope
	var toStoreAt []int
	var oldest time.Time
	for i, m := range ms {
		var env *envelope.Envelope
		if decoded != nil {
			env = decoded[i]
		} else {
			env = new(envelope.Envelope)
			if err := envelope.Unmarshal(m.Data, env); err != nil {
				p.log.WarnContext(bus.ContextOf(ctx, m), "pipeline: unprocessable ingress message", "bus_id", m.ID, "err", err)
				errs[i] = fmt.Errorf("%w: %v", bus.ErrPermanent, err)
				continue
			}
		}
		envs[i] = env
		if oldest.IsZero() || env.CreatedAt.Before(oldest) {
			oldest = env.CreatedAt
		}
		if !env.Ephemeral && m.Attributes[bus.AttrStored] == "" {
			toStore = append(toStore, env)
			toStoreAt = append(toStoreAt, i)
		}
	}
	if len(toStore) > 0 {
		spans := p.batchSpans(ctx, "store write", ms, envs, toStoreAt)
		acked, err := p.store.PutMessages(ctx, toStore)
		endSpans(spans, err)
		if err != nil {
			err = outage(ctx, p.store, err)
			for i := range ms {
				if errs[i] == nil {
					errs[i] = fmt.Errorf("pipeline store %s: %w", ms[i].ID, err)
				}
			}
			return errs
		}
		for j, done := range acked { // acknowledged by the recipient before: handled, nothing to route
			if done {
				envs[toStoreAt[j]] = nil
			}
		}
	}
	// Route in order. Once one message of a recipient fails, the later
	// ones of that recipient fail too, so that a retry keeps their order.
	// The delivery events of the whole batch go out together at the end.
	var batch []pending
	live := make([]bool, len(envs)) // routed to a live connection
	failed := map[string]error{}
	var down error                            // presence is down: no use asking it for the rest
	where := p.lookupAll(ctx, ms, envs, errs) // presence, looked up once per recipient per batch
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
		if live[i], err = p.route(bus.ContextOf(ctx, ms[i]), i, ms[i], env, where, &batch); err != nil {
			errs[i] = err
			failed[env.Recipient] = err
			if errors.Is(err, bus.ErrUnavailable) {
				down = err
			}
		}
	}
	if len(batch) > 0 {
		ds := make([]bus.Delivery, len(batch))
		for j, d := range batch {
			ds[j] = d.Delivery
		}
		if err := p.bus.PublishDeliveries(ctx, ds); err != nil {
			err = fmt.Errorf("pipeline deliver: %w", err)
			for _, d := range batch {
				if errs[d.index] == nil {
					errs[d.index] = err
				}
			}
		} else if p.o.Metrics != nil {
			p.o.Metrics.DeliveriesPublished.Add(float64(len(ds)))
		}
	}
	p.markRouted(ctx, envs, errs, deferMarks)
	for i, env := range envs {
		if live[i] && errs[i] == nil && !env.Ephemeral {
			p.watchUnacked(env)
		}
	}
	return errs
}

// batchPresence is a Presence that looks up many users in one call.
type batchPresence interface {
	InstancesOf(ctx context.Context, users []string) ([][]string, error)
}

// lookupAll looks up the presence of the recipients of envs (those of
// messages without an error) with one call, when the presence registry
// takes many users at once and there is more than one. What it could not
// look up, route looks up one recipient at a time, with the errors that
// brings.
func (p *Pipeline) lookupAll(ctx context.Context, ms []*bus.Message, envs []*envelope.Envelope, errs []error) map[string][]string {
	where := map[string][]string{}
	bp, ok := p.presence.(batchPresence)
	if !ok {
		return where
	}
	var users []string
	var first []int // the message that asks for each user
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
	spans := p.batchSpans(ctx, "presence lookup", ms, envs, first)
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

// batchSpans starts, when tracing is on, a span named name in the trace of
// each message ms[i], i in at: one call made for all of them at once.
func (p *Pipeline) batchSpans(ctx context.Context, name string, ms []*bus.Message, envs []*envelope.Envelope, at []int) []trace.Span {
	if p.tracer == nil {
		return nil
	}
	spans := make([]trace.Span, len(at))
	for j, i := range at {
		_, spans[j] = telemetry.Start(bus.ContextOf(ctx, ms[i]), p.tracer, name, trace.SpanKindInternal)
		spans[j].SetAttributes(telemetry.AttrMessageID.String(envs[i].ID), telemetry.AttrCount.Int(len(at)))
	}
	return spans
}

// endSpans ends spans with the call's outcome.
func endSpans(spans []trace.Span, err error) {
	for _, s := range spans {
		telemetry.End(s, err)
	}
}

// markRouted records that the stored envelopes of the batch that were
// routed are, with one store call: at once, or with deferMarks MarkDelay
// later (see WriteMarks).
func (p *Pipeline) markRouted(ctx context.Context, envs []*envelope.Envelope, errs []error, deferMarks bool) {
	var ids []string
	for i, env := range envs {
		if env != nil && !env.Ephemeral && errs[i] == nil {
			ids = append(ids, env.ID)
		}
	}
	if len(ids) == 0 {
		return
	}
	if deferMarks && p.marks.add(time.Now(), ids) {
		return
	}
	p.writeMarks(ctx, ids)
}

// pending is a delivery event waiting to be published with its batch, and
// the index of its ingress message.
type pending struct {
	bus.Delivery
	index int
}

// route addresses a stored envelope to the instances holding its
// recipient's connections (adding a delivery event to batch for each other
// instance), or asks for a push when there are none. live reports that
// there were some.
func (p *Pipeline) route(ctx context.Context, index int, m *bus.Message, env *envelope.Envelope, where map[string][]string, batch *[]pending) (live bool, err error) {
	instances, ok := where[env.Recipient]
	if !ok {
		sctx, span := telemetry.Start(ctx, p.tracer, "presence lookup", trace.SpanKindInternal)
		instances, err = p.presence.Instances(sctx, env.Recipient)
		if span != nil {
			span.SetAttributes(telemetry.AttrMessageID.String(env.ID), telemetry.AttrCount.Int(len(instances)))
			telemetry.End(span, err)
		}
		if err != nil {
			err = outage(ctx, p.presence, err)
			return false, fmt.Errorf("pipeline presence %s: %w", env.ID, err)
		}
		where[env.Recipient] = instances
	}
	for _, inst := range instances {
		if inst == p.o.Instance && p.o.Local != nil {
			lctx, span := telemetry.Start(ctx, p.tracer, "deliver local", trace.SpanKindInternal)
			p.o.Local.Deliver(lctx, env)
			if span != nil {
				span.SetAttributes(telemetry.AttrMessageID.String(env.ID), telemetry.AttrInstance.String(inst))
				span.End()
			}
			if p.o.Metrics != nil {
				p.o.Metrics.DeliveriesLocal.Inc()
			}
			continue
		}
		// Ordered per recipient within each instance's subscription; the
		// instance is part of the key so that events for other instances
		// (which a filtered subscription never sees) cannot hold it up.
		dm := &bus.Message{ID: env.ID + "." + inst, Data: m.Data, OrderingKey: inst + "/" + env.Recipient, Trace: m.Trace}
		*batch = append(*batch, pending{Delivery: bus.Delivery{Instance: inst, Message: dm}, index: index})
	}
	if len(instances) == 0 && !env.Ephemeral && p.o.Notifier != nil {
		n := push.Notification{Recipient: env.Recipient, MessageID: env.ID, Type: env.Type}
		if p.tracer != nil {
			n.Trace = trace.SpanContextFromContext(ctx)
		}
		p.o.Notifier.Notify(n)
		if p.o.Metrics != nil {
			p.o.Metrics.PushRequested.Inc()
		}
	}
	return len(instances) > 0, nil
}

func isPermanent(err error) bool { return errors.Is(err, bus.ErrPermanent) }

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
