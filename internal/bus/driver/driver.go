// Package driver is the narrow interface between the portable bus
// (internal/bus) and one message engine. A driver speaks its engine and
// nothing else: it creates or verifies the topology, publishes batches,
// receives batches, acks, nacks (with a delay where the engine can), copies
// messages into the dead-letter queues and lists, reads and deletes them.
//
// Everything that is policy lives in the portable bus: workers and flow
// control, serial handling per ordering key, batches, retry with backoff,
// the ack / nack / dead-letter decision with its reason, counting, and the
// attributes written on the way to and from the engine. Where engines
// differ, a driver says so in its Capabilities; the portable bus never
// finds out by a type assertion.
//
// Every driver passes the suite in drivertest, and the portable suites in
// bustest run through the portable bus over every driver.
package driver

import (
	"context"
	"errors"
	"time"

	"github.com/go-routing-service/routingservice/internal/batch"
)

// The two consumed queues. Each has a dead-letter queue.
const (
	// QueueIngress carries envelopes accepted by the API to the pipeline,
	// through one subscription shared by every pipeline instance.
	QueueIngress = "ingress"
	// QueueDelivery carries delivery events, each addressed to one realtime
	// instance, which receives only its own through its own subscription.
	QueueDelivery = "delivery"
)

// AttrInstance is the attribute that names the instance a delivery event is
// addressed to. The portable bus sets it on every delivery event; a driver
// whose engine routes by attribute (a Pub/Sub subscription filter) uses it.
const AttrInstance = "instance"

// ErrNotFound is returned for a dead message that does not exist.
var ErrNotFound = errors.New("not found")

// ErrClosed is returned by operations on a closed driver.
var ErrClosed = errors.New("bus closed")

// Message is one message on its way to or from the engine.
type Message struct {
	// ID identifies the message end to end; it travels with the message.
	ID string
	// DedupID, when not empty, asks an engine with publish-side
	// deduplication (Capabilities.DedupWindow > 0) to store one message per
	// DedupID within its window. Empty: never deduplicated (a replay).
	DedupID string
	// Data is the message body (bus.Message.Data).
	Data []byte
	// Attributes are small string key/values beside the body. The portable
	// bus checks their keys and values before they reach a driver.
	Attributes map[string]string
	// OrderingKey, when not empty, is kept by the engine in publish order.
	OrderingKey string
	// Instance is the realtime instance a delivery event is addressed to
	// (QueueDelivery only).
	Instance string

	// DeliveryAttempt is set on received messages: 1 on first delivery.
	DeliveryAttempt int
	// Acker settles a received message. Nil on messages to publish.
	Acker Acker
	// Pack, on an event the portable bus unpacked from a pack (several
	// delivery events sent as one engine message), is the pack's own
	// Acker, and PackIndex the event's place in it: a driver that needs
	// the engine message to dead-letter an event (NATS: the stream
	// sequence and subject) finds it there. Nil otherwise.
	Pack      Acker
	PackIndex int
}

// Acker settles one received message. Each received message is settled
// exactly once by the portable bus.
type Acker interface {
	// Ack removes the message: it is not delivered again.
	Ack() error
	// Nack releases the message for redelivery after delay (at once for
	// 0). Engines without Capabilities.NackDelay redeliver it by their own
	// retry policy and ignore delay.
	Nack(delay time.Duration) error
	// Extend restarts the message's ack deadline, on an engine that
	// redelivers a message held past it unless told it is still being
	// worked on (Capabilities.Extend). Elsewhere it does nothing and
	// returns nil; the portable bus calls it only where the capability
	// says it is needed.
	Extend() error
}

// DeadMessage is one message in a dead-letter queue.
type DeadMessage struct {
	// ID identifies it within its dead-letter queue (driver-defined).
	ID string
	// Message is the dead-lettered message: ID, body, attributes (the
	// portable bus's dead-letter attributes included), ordering key and,
	// for delivery events, the instance.
	Message Message
	// Attempts is the engine's own count of delivery attempts when the
	// engine dead-lettered the message by itself (0 when unknown).
	Attempts int
	// DeadAt is when it was dead-lettered (zero when unknown).
	DeadAt time.Time
}

// Capabilities says what an engine does and does not do, so that the
// portable bus adapts explicitly.
type Capabilities struct {
	// DedupWindow is how long the engine remembers a published DedupID
	// and stores a repeated one once; 0: no publish-side deduplication
	// (a message published twice is delivered twice).
	DedupWindow time.Duration
	// NackDelay reports that Acker.Nack honours its delay. When false the
	// engine's own retry policy (configured on the driver) spaces
	// redeliveries.
	NackDelay bool
	// SetupCheck reports that CheckSetup verifies something (permissions
	// of the engine's own dead-lettering); when false it returns nil.
	SetupCheck bool
	// Backlog reports that IngressBacklog answers cheaply; when false it
	// returns an error wrapping errors.ErrUnsupported.
	Backlog bool
	// Extend reports that the engine redelivers a message held past its
	// ack deadline unless Acker.Extend is called (NATS): the portable bus
	// then extends the messages it holds back while a backend is down.
	// When false the engine's client extends held messages by itself
	// (Pub/Sub) and Acker.Extend does nothing.
	Extend bool
}

// Driver is one engine's primitives. Methods are safe for concurrent use.
type Driver interface {
	// Capabilities says what this engine does.
	Capabilities() Capabilities

	// Publish sends ms to queue and returns once the engine durably holds
	// every one of them, or with the first error (then any of them may have
	// been published). Messages of one ordering key keep their order.
	// On QueueDelivery each message goes to its Instance.
	Publish(ctx context.Context, queue string, ms []*Message) error
	// PrepareDelivery makes sure that instance's delivery subscription
	// exists: events published to instance from its return on are kept for
	// it until it receives them (or its subscription expires unused).
	PrepareDelivery(ctx context.Context, instance string) error
	// Subscribe opens the shared ingress subscription (instance is empty)
	// or instance's delivery subscription (created if needed).
	Subscribe(ctx context.Context, queue, instance string) (Subscription, error)

	// DeadLetter copies a received message, with the attributes given in
	// m (which carry the reason), into queue's dead-letter queue. The
	// portable bus then acks the original.
	DeadLetter(ctx context.Context, queue string, m *Message) error
	// ListDead returns up to limit dead messages of queue (all when limit
	// <= 0), oldest first.
	ListDead(ctx context.Context, queue string, limit int) ([]DeadMessage, error)
	// GetDead returns one dead message, or an error wrapping ErrNotFound.
	GetDead(ctx context.Context, queue, id string) (DeadMessage, error)
	// DeleteDead deletes the dead messages of queue with these ids (all
	// when ids is nil) and returns how many it deleted; unknown ids are
	// skipped.
	DeleteDead(ctx context.Context, queue string, ids []string) (int, error)
	// OnEngineDeadLetter registers fn, called once for each message the
	// engine (not the portable bus) moves to a dead-letter queue: one whose
	// deliveries ran out without being settled (a handler that never
	// returned). Drivers whose engine does this silently never call it.
	OnEngineDeadLetter(fn func(queue string))

	// IngressBacklog is how many ingress messages wait or are being
	// handled (see Capabilities.Backlog).
	IngressBacklog(ctx context.Context) (int64, error)
	// CheckSetup verifies what the engine needs beyond topology (see
	// Capabilities.SetupCheck).
	CheckSetup(ctx context.Context) error
	// Ping reports whether the engine answers and the ingress publish path
	// is this deployment's.
	Ping(ctx context.Context) error
	// Close releases the driver's resources. Subscriptions must be closed
	// first.
	Close() error
}

// Subscription is one open subscription.
type Subscription interface {
	// Receive returns between 1 and max received messages, waiting until
	// there is one. It returns ctx.Err() when ctx is done first, and
	// another error when the subscription broke (the caller closes it and
	// may subscribe again).
	Receive(ctx context.Context, max int) ([]*Message, error)
	// Close stops receiving. Messages received but not yet returned by
	// Receive are released for redelivery; those returned must be settled
	// by the caller, and Close may wait until they are.
	Close() error
}

// ErrEnded is returned by Take when the feed ended with nothing waiting.
var ErrEnded = errors.New("subscription ended")

// Take is the Receive of a driver that queues received messages on a
// channel: it returns what waits on msgs, converted, at least one (waiting
// until there is one) and at most max. It returns ctx.Err() when ctx is
// done first, and ErrEnded once ended is closed and msgs is empty.
func Take[T any](ctx context.Context, msgs <-chan T, ended <-chan struct{}, max int, convert func(T) *Message) ([]*Message, error) {
	var first T
	select {
	case first = <-msgs:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-ended:
		select {
		case first = <-msgs:
		default:
			return nil, ErrEnded
		}
	}
	out := make([]*Message, 1, min(max, 1+len(msgs)))
	out[0] = convert(first)
	if len(out) < max {
		batch.Drain(msgs, func(m T) bool {
			out = append(out, convert(m))
			return len(out) < max
		})
	}
	return out, nil
}
