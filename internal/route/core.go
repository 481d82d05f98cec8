// Package route owns a message's way through the service, from the
// sender's request to the recipient's connections.
//
// Accept takes one message. It checks it against the client contract
// (recipient URN, payload present, standard base64 and within the size
// limit, type, idempotency key) and the limits on what may wait (the
// recipient's queue, the sender's quota, the routing backlog); it stores it
// (ephemeral messages never are); and it hands its routing event on: to
// this instance's routing in process when it runs here, else on the
// ingress topic. A message Accept accepted is not lost: a stored one is
// committed before Accept returns and, should its routing event be lost,
// the sweep routes it; an ephemeral one is on the bus. Accept's errors are
// *Error values with a Kind (invalid, too large, queue full, quota,
// idempotency key reused, unavailable, overloaded); with any of them
// nothing was accepted.
//
// Route routes a batch of routing events: the recipients' presence looked
// up once for the batch; each message delivered to this instance's
// connections of its recipient in process, and addressed to each other
// instance that holds one (one delivery event per instance, published
// together); a push asked for when the recipient has none; the stored
// messages marked routed. One recipient's messages are routed in order,
// and once one fails its later ones in the batch fail too.
//
// A message is encoded once: its wire form (the envelope's JSON, made at
// Accept from the payload's base64 as it arrived) is the routing event's
// body, what the in-process hand-off carries, and what a live WebSocket
// frame holds. Routing decodes no payload.
//
// Routing events reach Route three ways, each a thin adapter: the ingress
// consumer (the bus), the in-process hand-off (messages this instance
// accepted), and the sweep of stored messages left unrouted. Run runs
// them, with the loops they need.
package route

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Store is what the core needs of the store: new messages with their
// idempotency records and pending counts (Accept), envelopes from routing
// events and routed marks (Route and the sweep).
type Store interface {
	PutNew(ctx context.Context, msgs []store.NewMessage) (stored []bool, err error)
	PutMessages(ctx context.Context, envs []*envelope.Envelope) (acked []bool, err error)
	MarkRouted(ctx context.Context, ids []string) error
	Unrouted(ctx context.Context, before time.Time, limit int) ([]*envelope.Envelope, error)
	Stored(ctx context.Context, ids []string) ([]string, error)
	PendingCount(ctx context.Context, recipient string) (int, error)
	PendingTotal(ctx context.Context) (int64, error)
	SenderPending(ctx context.Context, sender string) (store.SenderCount, error)
	ReserveIdempotency(ctx context.Context, rec store.Idempotency) (store.Idempotency, bool, error)
	MarkPublished(ctx context.Context, sender, key string) error
	ReleaseIdempotency(ctx context.Context, sender, key string) error
}

// Presence tells which instances hold a user's connections. One that
// also has InstancesOf(ctx, users) ([][]string, error) (presence.Presence
// has) is asked about a batch's recipients with one call.
type Presence interface {
	Instances(ctx context.Context, user string) ([]string, error)
}

// Bus carries routing events (the ingress topic) and delivery events
// (bus.Bus over any driver).
type Bus interface {
	PublishIngress(ctx context.Context, m *bus.Message) error
	ReceiveIngressBatch(ctx context.Context, max int, h bus.BatchHandler) error
	PublishDeliveries(ctx context.Context, ds []bus.Delivery) error
}

// Notifier wakes an offline recipient's devices. Notify must not block.
type Notifier interface {
	Notify(n push.Notification)
}

// Sessions are this instance's WebSocket sessions. DeliverEncoded hands
// them a message whose wire form is wire (env's payload is not read);
// ctx carries the message's trace. It must not block.
type Sessions interface {
	DeliverEncoded(ctx context.Context, env *envelope.Envelope, wire []byte)
}

// Defaults of Options fields left zero.
const (
	// DefaultHandoffQueue is the routing events the in-process hand-off
	// holds before Accept publishes on the ingress topic again.
	DefaultHandoffQueue = 4096
	// DefaultMarkDelay is how long a batch's routed marks are usually
	// held back: by then a message delivered live is usually
	// acknowledged, and its mark writes nothing.
	DefaultMarkDelay = time.Second
	// DefaultUnackedMax bounds the live-routed messages watched for an
	// acknowledgement.
	DefaultUnackedMax = 200_000
	// DefaultLagInterval is how often the lag gauges are read.
	DefaultLagInterval = 5 * time.Second
	// defaultBacklogInterval is how often the ingress backlog is read.
	defaultBacklogInterval = 100 * time.Millisecond
)

// Options configures the core. Accept uses the first group, Route the
// second; Run runs what the fields ask for.
type Options struct {
	// Instance is this instance's id: delivery events for it go to
	// Sessions in process.
	Instance string

	// MaxPayloadBytes bounds a payload, after base64 decoding.
	MaxPayloadBytes int
	// AcceptTimeout bounds the store and bus calls of one Accept.
	AcceptTimeout time.Duration
	// MaxPendingPerRecipient refuses stored messages to a recipient with
	// that many pending (<= 0: no cap).
	MaxPendingPerRecipient int
	// MaxPendingPerSender and MaxPendingBytesPerSender refuse stored
	// messages of a sender with that many pending, or whose pending
	// payload bytes the message would take past the bound, whoever the
	// recipients are (<= 0: no cap).
	MaxPendingPerSender      int
	MaxPendingBytesPerSender int64
	// Backlog, with MaxBacklog > 0, reads how many routing events wait on
	// the ingress topic; Run reads it every BacklogInterval (default
	// 100ms) and Accept refuses messages (KindOverloaded) while the last
	// read is over MaxBacklog.
	Backlog         func(ctx context.Context) (int64, error)
	MaxBacklog      int64
	BacklogInterval time.Duration

	// Consume has Run route the ingress topic's routing events, sweep for
	// stored messages left unrouted (RerouteAfter), push for messages left
	// unacknowledged (UnackedAfter) and read the lag gauges: what an
	// instance with the pipeline role does.
	Consume bool
	// Sessions, when set, are this instance's WebSocket sessions.
	Sessions Sessions
	// Notifier, when set, asks for pushes.
	Notifier Notifier
	// HandlerTimeout bounds the routing of one batch (default 10s).
	HandlerTimeout time.Duration
	// MaxBatch bounds the routing events routed together (<= 1: one at a
	// time).
	MaxBatch int
	// HandoffQueue, when positive, lets Accept hand the routing events of
	// the messages it stored to this instance's routing in process rather
	// than over the ingress topic, up to that many waiting.
	HandoffQueue int
	// RerouteAfter is how old a stored message left unrouted must be for
	// the sweep to route it (<= 0: no sweep). It must exceed the time a
	// routing event normally takes through the bus.
	RerouteAfter time.Duration
	// MarkDelay, when positive, holds the routed marks of a batch back
	// that long; it must stay well below RerouteAfter, or the sweep routes
	// those messages again.
	MarkDelay time.Duration
	// UnackedAfter, when positive (and Notifier is set), is how long a
	// stored message routed to a live connection may stay unacknowledged
	// before its recipient gets a push anyway.
	UnackedAfter time.Duration
	// UnackedMax bounds the messages watched for that at a time
	// (DefaultUnackedMax when <= 0); beyond it they are not watched.
	UnackedMax int
	// LagInterval is how often the lag gauges are read (default
	// DefaultLagInterval).
	LagInterval time.Duration

	Logger  *slog.Logger
	Metrics *telemetry.Metrics
	// TracerProvider, when set, traces each message: its acceptance
	// (idempotency, store write, publish) and its routing (store write,
	// presence lookup, local delivery, push request).
	TracerProvider trace.TracerProvider
}

// Core accepts and routes messages. Its methods are safe for concurrent
// use.
type Core struct {
	o        Options
	store    Store
	presence Presence
	bus      Bus
	ids      *envelope.IDs
	log      *slog.Logger
	m        *telemetry.Metrics // nil without metrics
	tracer   trace.Tracer       // nil when tracing is off

	// counts and senders remember pending counts read from the store, of
	// recipients and of senders.
	counts  queueCounts
	senders queueCounts
	backlog *backlog // nil without a backlog limit

	handoff *handoff         // nil without the in-process hand-off
	marks   *deferredMarks   // nil when routed marks are written at once
	unacked *unackedSchedule // nil when unacknowledged messages are not watched
}

// New returns a core over the store, presence and bus.
func New(o Options, st Store, pr Presence, b Bus) *Core {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.HandlerTimeout <= 0 {
		o.HandlerTimeout = 10 * time.Second
	}
	if o.UnackedMax <= 0 {
		o.UnackedMax = DefaultUnackedMax
	}
	if o.LagInterval <= 0 {
		o.LagInterval = DefaultLagInterval
	}
	if o.BacklogInterval <= 0 {
		o.BacklogInterval = defaultBacklogInterval
	}
	c := &Core{o: o, store: st, presence: pr, bus: b, ids: envelope.NewIDs(), log: o.Logger, m: o.Metrics,
		tracer: telemetry.Tracer(o.TracerProvider, "route")}
	if o.Backlog != nil && o.MaxBacklog > 0 {
		c.backlog = &backlog{read: o.Backlog, max: o.MaxBacklog, interval: o.BacklogInterval, log: o.Logger}
	}
	if o.HandoffQueue > 0 {
		c.handoff = &handoff{ch: make(chan Event, o.HandoffQueue)}
	}
	if o.MarkDelay > 0 {
		c.marks = &deferredMarks{}
	}
	if o.UnackedAfter > 0 && o.Notifier != nil {
		c.unacked = &unackedSchedule{limit: o.UnackedMax}
	}
	return c
}

// Run runs the core's loops until ctx is done: the backlog watch, the
// in-process hand-off and, with Consume, the ingress consumer, the sweep,
// the pushes for unacknowledged messages and the lag gauges; and the
// writer of delayed routed marks. When ctx ends it drains in order: the
// hand-off refuses new events and routes those it holds, the consumer
// finishes its in-flight batches, then the marks held back are written;
// Run returns once all of that is done. If the ingress consumer fails
// (its subscription cannot be opened) Run stops the other loops the same
// way and returns its error.
func (c *Core) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var consumeErr error
	var routing, others sync.WaitGroup // routing loops make marks
	if c.backlog != nil {
		others.Go(func() { c.backlog.run(ctx) })
	}
	if c.handoff != nil {
		routing.Go(func() { c.runHandoff(ctx) })
	}
	if c.o.Consume {
		routing.Go(func() {
			if err := c.consume(ctx); err != nil && ctx.Err() == nil {
				consumeErr = err
				stop()
			}
		})
		routing.Go(func() { c.sweep(ctx) })
		others.Go(func() { c.pushUnacked(ctx) })
		others.Go(func() { c.watchLag(ctx) })
	}
	// The marks outlive the loops that make them: the last are written
	// once those have returned.
	mctx, stopMarks := context.WithCancel(context.WithoutCancel(ctx))
	var marks sync.WaitGroup
	marks.Go(func() { c.writeMarksUntil(mctx) })
	routing.Wait()
	stopMarks()
	marks.Wait()
	others.Wait()
	return consumeErr
}
