// Package bus is the portable message bus between the service's roles.
//
// Two streams flow through it:
//
//   - ingress: envelopes accepted by the API, consumed by the pipeline through
//     one shared, durable subscription (each message is handled by one
//     pipeline instance);
//   - delivery: delivery events addressed to one realtime instance; each
//     instance consumes only the events addressed to it, through its own
//     subscription.
//
// Bus is a concrete type over a driver (package driver; engines in natsbus
// and gcppubsub), the way gocloud.dev's pubsub sits over pubsub/driver. Bus
// owns the delivery policy, identical on every engine: handler workers and
// flow control, serial handling per ordering key, batches, retry with
// backoff, the ack / nack / dead-letter decision with its reason and
// attempt count, counting, and the attributes written on the way to and
// from the engine. A driver only speaks its engine.
//
// Delivery to handlers is at-least-once. A handler that returns nil acks the
// message; one that returns an error nacks it, and it is redelivered later
// (MinBackoff doubling per attempt, up to MaxBackoff) until its attempts run
// out and it is dead-lettered. A handler error that wraps ErrPermanent
// dead-letters the message at once. A handler error that wraps
// ErrUnavailable (a backend is down) costs no attempt: the receiver pauses,
// keeps the message and tries it again until the backend is back. A handler interrupted by shutdown (its
// context cancelled) releases the message for another instance at once,
// whatever its attempt.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// The two queues that have a dead-letter queue.
const (
	QueueIngress  = driver.QueueIngress
	QueueDelivery = driver.QueueDelivery
)

// Attributes that the bus sets.
const (
	// AttrDeadReason says why a dead-lettered message was dead-lettered.
	AttrDeadReason = "dead_letter_reason"
	// AttrDeadAttempts is how many deliveries a dead-lettered message had.
	AttrDeadAttempts = "dead_letter_attempts"
	// AttrInstance names the instance a delivery event is addressed to.
	AttrInstance = driver.AttrInstance
	// AttrStored marks an ingress message whose envelope the API has
	// stored already: the pipeline only routes it.
	AttrStored = "stored"
	// AttrTraceParent and AttrTraceState carry the message's trace
	// context (W3C Trace Context) when tracing is on.
	AttrTraceParent = "traceparent"
	AttrTraceState  = "tracestate"
)

// ErrPermanent marks a handler error that retrying cannot fix (undecodable or
// invalid message): the message is dead-lettered without further attempts.
var ErrPermanent = errors.New("permanent failure")

// ErrUnavailable marks a handler error caused by a backend the handler
// needs being down (not by the message). It does not count as a failed
// attempt: the receiver keeps the message (telling the engine it is still
// being worked on), stops taking new messages, and hands it to the handler
// again with capped backoff until the handler stops answering
// ErrUnavailable, for as long as the outage lasts.
var ErrUnavailable = errors.New("backend unavailable")

// ErrClosed is returned by operations on a closed bus.
var ErrClosed = driver.ErrClosed

// ErrNotFound is returned when a dead-lettered message does not exist.
var ErrNotFound = driver.ErrNotFound

// Message is one message on the bus.
type Message struct {
	// ID identifies the message end to end. Required. Engines with
	// publish-side deduplication (Capabilities().DedupWindow > 0: NATS
	// JetStream) store an ID published twice within their window once;
	// others (Pub/Sub) may deliver it twice. Delivery is at-least-once on
	// every engine, so consumers are idempotent on ID: the store keeps one
	// envelope per id and never takes back an acknowledged one, and
	// clients deduplicate deliveries by id.
	ID string
	// Data is the message body.
	Data []byte
	// Attributes are small string key/values carried beside the body
	// (trace context, ...). Keys are 1-64 of [A-Za-z0-9_.-] starting with
	// a letter, never starting with "nats-", "routing", "goog" or
	// "dead_letter_" and never "packed" (any case); values are at most
	// 1024 bytes without line breaks.
	Attributes map[string]string
	// OrderingKey, when not empty, orders messages: a receiver hands the
	// messages of one key to its handler one at a time, in the order the
	// bus holds them (publish order). The service uses the recipient, so
	// one recipient's messages are stored and delivered in the order they
	// were accepted.
	OrderingKey string
	// DeliveryAttempt is set on received messages: 1 on first delivery.
	DeliveryAttempt int
	// Trace, when tracing is on, is the message's place in its trace. On
	// publish, when valid, it is the parent of the message's producer span
	// (else the span in the publish call's context is): so each message of
	// a batch publish keeps its own trace. On receive it is the message's
	// processing span, whose parent is the producer span: a batch handler
	// starts the spans of its work on one message under it (see
	// ContextOf); a Handler's context holds it already.
	Trace trace.SpanContext
}

// ContextOf returns ctx with m's processing span as the current span, for
// the work on m of a batch handler. It returns ctx when m carries no trace.
func ContextOf(ctx context.Context, m *Message) context.Context {
	if !m.Trace.IsValid() {
		return ctx
	}
	return trace.ContextWithSpanContext(ctx, m.Trace)
}

// Handler handles one received message. See the package doc for what its
// result means. Handlers may be called concurrently.
type Handler func(ctx context.Context, m *Message) error

// BatchHandler handles a batch of received messages and returns one error
// per message, in the same order (nil acks that message; errors mean what
// they mean for Handler). Messages of one OrderingKey appear in bus order.
type BatchHandler func(ctx context.Context, ms []*Message) []error

// Delivery is one delivery event and the instance it is addressed to.
type Delivery struct {
	Instance string
	Message  *Message
}

// Options are the delivery policy. Zero fields take the defaults named on
// each.
type Options struct {
	// MaxDeliveryAttempts before a message is dead-lettered; default 5.
	MaxDeliveryAttempts int
	// MinBackoff and MaxBackoff bound the delay before a message whose
	// handler failed is redelivered: MinBackoff doubling per attempt up to
	// MaxBackoff; defaults 1s and 60s. Engines that cannot delay a nack
	// (Capabilities().NackDelay false) apply their own retry policy, which
	// their driver configures from the same values.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// OutageBackoff caps the delay between two tries of messages whose
	// handler answered ErrUnavailable (MinBackoff doubling); default 5s.
	OutageBackoff time.Duration
	// OnOutage, when set, is called when a receive call pauses for an
	// outage (true) and when it resumes (false). It must not block.
	OnOutage func(queue string, paused bool)
	// MaxOutstanding bounds the messages one receive call holds
	// unsettled (received, waiting or in handlers); default 1000.
	MaxOutstanding int
	// Concurrency is the number of handler workers of one receive call;
	// default MaxOutstanding/2 (at least 1).
	Concurrency int
	// DeliveryConcurrency, when positive, is the number of handler
	// workers of a ReceiveDelivery call instead (at most MaxOutstanding).
	DeliveryConcurrency int
	// Logger receives the bus's logs; default slog.Default().
	Logger *slog.Logger
	// OnDeadLetter, when set, is called once for each message moved to a
	// dead-letter queue (by a permanent error, on the last attempt, or by
	// the engine itself), with the queue and the reason. It must not block.
	OnDeadLetter func(queue, reason string)
	// TracerProvider, when set to a recording provider, traces every
	// message: a producer span on publish whose context the message
	// carries in its attributes, and a processing span per received
	// message continuing it. Nil: no tracing, at no cost.
	TracerProvider trace.TracerProvider
	// System names the engine in spans (messaging.system: nats,
	// gcp_pubsub).
	System string
	// PackDeliveries sends the delivery events of one PublishDeliveries
	// call that go to one instance as one engine message (see AttrPacked).
	// Receivers unpack packs whatever this says.
	PackDeliveries bool
}

func (o Options) withDefaults() Options {
	if o.MaxDeliveryAttempts <= 0 {
		o.MaxDeliveryAttempts = 5
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.OutageBackoff <= 0 {
		o.OutageBackoff = 5 * time.Second
	}
	o.OutageBackoff = max(o.OutageBackoff, o.MinBackoff)
	if o.MaxOutstanding <= 0 {
		o.MaxOutstanding = 1000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = max(1, o.MaxOutstanding/2)
	}
	o.Concurrency = min(o.Concurrency, o.MaxOutstanding)
	if o.DeliveryConcurrency <= 0 {
		o.DeliveryConcurrency = o.Concurrency
	}
	o.DeliveryConcurrency = min(o.DeliveryConcurrency, o.MaxOutstanding)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Bus publishes and receives the service's two streams over one driver. It
// is safe for concurrent use. It owns the driver: Close closes it.
type Bus struct {
	d    driver.Driver
	caps driver.Capabilities
	o    Options
	log  *slog.Logger
	// tracer is nil when tracing is off.
	tracer trace.Tracer

	// ctx is cancelled by Close; receivers and handlers derive from it.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	active sync.WaitGroup // running receive calls

	deadOps sync.Mutex // serialises replays and purges

	// packKey is the ordering key of this bus's packs; packSeq numbers them.
	packKey string
	packSeq atomic.Uint64

	// health is whether the engine takes publishes (health.go).
	health health
	// subs is, per queue, whether a receive call holds a subscription.
	subMu sync.Mutex
	subs  map[string]*subState
}

// New returns a Bus over d with the delivery policy o.
func New(d driver.Driver, o Options) *Bus {
	o = o.withDefaults()
	b := &Bus{d: d, caps: d.Capabilities(), o: o, log: o.Logger.With("component", "bus"), tracer: newTracer(o.TracerProvider),
		packKey: newPackKey()}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	d.OnEngineDeadLetter(func(queue string) { b.deadLettered(queue, reasonEngine) })
	return b
}

// reasonEngine is the reason of a message the engine dead-lettered by itself.
const reasonEngine = "delivery attempts exhausted without being settled (dead-lettered by the engine)"

// Capabilities says what the engine under the bus does.
func (b *Bus) Capabilities() driver.Capabilities { return b.caps }

func (b *Bus) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// PublishIngress publishes m to the ingress queue and returns once the
// engine has durably accepted it.
func (b *Bus) PublishIngress(ctx context.Context, m *Message) error {
	if b.isClosed() {
		return ErrClosed
	}
	var span trace.Span
	if b.tracer != nil {
		span = b.startProducer(ctx, QueueIngress, "", m)
	}
	dm, err := outgoing(m, "", spanContext(span))
	if err == nil {
		err = b.d.Publish(ctx, QueueIngress, []*driver.Message{dm})
		b.published(ctx, QueueIngress, err)
		if err != nil {
			err = fmt.Errorf("bus: publish ingress %s: %w", m.ID, err)
		}
	} else {
		err = fmt.Errorf("bus: publish ingress: %w", err)
	}
	if span != nil {
		endSpan(span, err)
	}
	return err
}

// PublishIngressBatch publishes ms to the ingress queue together (the
// engine holds them in order, without waiting for each acknowledgement
// before sending the next) and returns once it durably accepted all of
// them; on an error, any of them may have been published.
func (b *Bus) PublishIngressBatch(ctx context.Context, ms []*Message) (err error) {
	if b.isClosed() {
		return ErrClosed
	}
	if len(ms) == 0 {
		return nil
	}
	var spans []trace.Span
	if b.tracer != nil {
		spans = make([]trace.Span, len(ms))
		defer func() {
			for _, s := range spans {
				if s != nil {
					endSpan(s, err)
				}
			}
		}()
	}
	dms := make([]*driver.Message, len(ms))
	for i, m := range ms {
		var sc trace.SpanContext
		if spans != nil {
			spans[i] = b.startProducer(ctx, QueueIngress, "", m)
			sc = spans[i].SpanContext()
		}
		dm, err := outgoing(m, "", sc)
		if err != nil {
			return fmt.Errorf("bus: publish ingress: %w", err)
		}
		dms[i] = dm
	}
	err = b.d.Publish(ctx, QueueIngress, dms)
	b.published(ctx, QueueIngress, err)
	if err != nil {
		return fmt.Errorf("bus: publish %d ingress messages: %w", len(ms), err)
	}
	return nil
}

// PublishDelivery publishes m addressed to the realtime instance named
// instance.
func (b *Bus) PublishDelivery(ctx context.Context, instance string, m *Message) error {
	return b.PublishDeliveries(ctx, []Delivery{{Instance: instance, Message: m}})
}

// PublishDeliveries publishes many delivery events at once, keeping their
// order, and returns once the engine durably accepted all of them; on an
// error, any of them may have been published. With
// Options.PackDeliveries, the events for one instance travel as one pack.
func (b *Bus) PublishDeliveries(ctx context.Context, ds []Delivery) (err error) {
	if b.isClosed() {
		return ErrClosed
	}
	if len(ds) == 0 {
		return nil
	}
	var spans []trace.Span
	if b.tracer != nil {
		spans = make([]trace.Span, len(ds))
		defer func() {
			for _, s := range spans {
				if s != nil {
					endSpan(s, err)
				}
			}
		}()
	}
	ms := make([]*driver.Message, len(ds))
	for i, d := range ds {
		if d.Instance == "" {
			return fmt.Errorf("bus: publish delivery %s: no instance", d.Message.ID)
		}
		var sc trace.SpanContext
		if spans != nil {
			spans[i] = b.startProducer(ctx, QueueDelivery, d.Instance, d.Message)
			sc = spans[i].SpanContext()
		}
		dm, err := outgoing(d.Message, d.Instance, sc)
		if err != nil {
			return fmt.Errorf("bus: publish delivery: %w", err)
		}
		ms[i] = dm
	}
	if b.o.PackDeliveries {
		ms = b.packs(ms)
	}
	err = b.d.Publish(ctx, QueueDelivery, ms)
	b.published(ctx, QueueDelivery, err)
	if err != nil {
		if len(ds) == 1 {
			return fmt.Errorf("bus: publish delivery %s to %s: %w", ds[0].Message.ID, ds[0].Instance, err)
		}
		return fmt.Errorf("bus: publish %d deliveries: %w", len(ds), err)
	}
	return nil
}

// PrepareDelivery makes sure instance's delivery subscription exists, so
// that events published to instance from its return on are kept for it. A
// realtime instance calls it before it announces its presence.
func (b *Bus) PrepareDelivery(ctx context.Context, instance string) error {
	if b.isClosed() {
		return ErrClosed
	}
	if err := b.d.PrepareDelivery(ctx, instance); err != nil {
		return fmt.Errorf("bus: prepare delivery of %s: %w", instance, err)
	}
	return nil
}

// IngressBacklog is how many ingress messages wait or are being handled,
// where the engine knows it cheaply (Capabilities().Backlog).
func (b *Bus) IngressBacklog(ctx context.Context) (int64, error) {
	if b.isClosed() {
		return 0, ErrClosed
	}
	return b.d.IngressBacklog(ctx)
}

// CheckSetup verifies what the engine needs beyond topology, where the
// engine has something to verify (Capabilities().SetupCheck).
func (b *Bus) CheckSetup(ctx context.Context) error {
	if b.isClosed() {
		return ErrClosed
	}
	return b.d.CheckSetup(ctx)
}

// Ping reports whether the engine answers and the ingress publish path is
// this deployment's.
func (b *Bus) Ping(ctx context.Context) error {
	if b.isClosed() {
		return ErrClosed
	}
	return b.d.Ping(ctx)
}

// Close stops the receivers, waits for their in-flight handlers, and closes
// the driver. Closing twice is harmless.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.active.Wait()
	return b.d.Close()
}

// enter registers a running receiver, or fails once the bus is closed.
func (b *Bus) enter() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.active.Add(1)
	return nil
}

// deadLettered counts one dead-lettered message.
func (b *Bus) deadLettered(queue, reason string) {
	if b.o.OnDeadLetter != nil {
		b.o.OnDeadLetter(queue, reason)
	}
}
