// Package bus is the port between the service's roles and a message bus.
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
// Delivery to handlers is at-least-once. A handler that returns nil acks the
// message; one that returns an error nacks it, and the bus redelivers it later
// (with backoff) until its attempts run out and it is dead-lettered. A handler
// error that wraps ErrPermanent dead-letters the message at once.
//
// Adapters live in sub-packages (natsbus, gcppubsub) and pass the conformance
// suite in bustest.
package bus

import (
	"context"
	"errors"
)

// Message is one message on the bus.
type Message struct {
	// ID identifies the message for deduplication: publishing the same ID
	// twice within the bus's duplicate window stores it once. Required.
	ID string
	// Data is the message body.
	Data []byte
	// Attributes are small string key/values carried beside the body
	// (trace context, reason of dead-lettering, ...).
	Attributes map[string]string
	// OrderingKey, when not empty, orders messages: a receiver hands the
	// messages of one key to its handler one at a time, in the order the
	// bus holds them (publish order). The service uses the recipient, so
	// one recipient's messages are stored and delivered in the order they
	// were accepted.
	OrderingKey string
	// DeliveryAttempt is set on received messages: 1 on first delivery.
	DeliveryAttempt int
}

// Handler handles one received message. See the package doc for what its
// result means. Handlers may be called concurrently.
type Handler func(ctx context.Context, m *Message) error

// ErrPermanent marks a handler error that retrying cannot fix (undecodable or
// invalid message): the message is dead-lettered without further attempts.
var ErrPermanent = errors.New("permanent failure")

// ErrClosed is returned by operations on a closed bus.
var ErrClosed = errors.New("bus closed")

// Bus publishes and receives the service's two streams.
type Bus interface {
	// PublishIngress publishes m to the ingress topic and returns once the
	// bus has durably accepted it.
	PublishIngress(ctx context.Context, m *Message) error
	// PublishDelivery publishes m addressed to the realtime instance named instance.
	PublishDelivery(ctx context.Context, instance string, m *Message) error
	// ReceiveIngress calls h for each ingress message, through the shared
	// ingress subscription, until ctx is done or the bus is closed. It returns
	// nil when ctx is done.
	ReceiveIngress(ctx context.Context, h Handler) error
	// ReceiveDelivery calls h for each delivery event addressed to instance,
	// through that instance's own subscription (created if needed), until ctx
	// is done. It returns nil when ctx is done.
	ReceiveDelivery(ctx context.Context, instance string, h Handler) error
	// Ping reports whether the bus answers.
	Ping(ctx context.Context) error
	// Close releases the bus's resources. Receivers return.
	Close() error
}

// BatchHandler handles a batch of received messages and returns one error
// per message, in the same order (nil acks that message; errors mean what
// they mean for Handler). Messages of one OrderingKey appear in bus order.
type BatchHandler func(ctx context.Context, ms []*Message) []error

// BatchReceiver is implemented by buses that can hand ingress messages to a
// handler in batches, so that the handler can write them with one store
// commit while keeping each ordering key's order. ReceiveIngressBatch
// behaves like ReceiveIngress; a batch holds at most max messages and is
// formed from what is already waiting, never by delaying a message.
type BatchReceiver interface {
	ReceiveIngressBatch(ctx context.Context, max int, h BatchHandler) error
}

// Delivery is one delivery event and the instance it is addressed to.
type Delivery struct {
	Instance string
	Message  *Message
}

// BatchPublisher is implemented by buses that can publish many delivery
// events at once (without a round trip each), keeping their order.
// PublishDeliveries returns nil once the bus durably accepted all of them;
// on an error, any of them may have been published.
type BatchPublisher interface {
	PublishDeliveries(ctx context.Context, ds []Delivery) error
}
