package bus

import (
	"context"
	"errors"
	"time"
)

// The two queues that have a dead-letter queue.
const (
	QueueIngress  = "ingress"
	QueueDelivery = "delivery"
)

// Attributes that the bus sets on dead-lettered messages.
const (
	AttrDeadReason   = "dead_letter_reason"
	AttrDeadAttempts = "dead_letter_attempts"
	// AttrInstance names the instance a delivery event is addressed to.
	AttrInstance = "instance"
)

// ErrNotFound is returned when a dead-lettered message does not exist.
var ErrNotFound = errors.New("not found")

// DeadMessage is one message in a dead-letter queue.
type DeadMessage struct {
	// ID identifies the message within its dead-letter queue.
	ID string
	// Queue is QueueIngress or QueueDelivery.
	Queue string
	// Message is the original message (id, data, attributes).
	Message Message
	// Reason says why it was dead-lettered.
	Reason string
	// Attempts is how many deliveries were attempted.
	Attempts int
	// DeadAt is when it was dead-lettered (zero when unknown).
	DeadAt time.Time
}

// DeadLetters inspects and replays the dead-letter queues. Every bus adapter
// implements it.
type DeadLetters interface {
	// ListDead returns up to limit dead messages of queue, oldest first.
	ListDead(ctx context.Context, queue string, limit int) ([]DeadMessage, error)
	// GetDead returns one dead message, or ErrNotFound.
	GetDead(ctx context.Context, queue, id string) (DeadMessage, error)
	// ReplayDead publishes the dead messages with these ids (all when ids
	// is nil) back on their topic and removes them from the dead-letter
	// queue. It returns how many were replayed.
	ReplayDead(ctx context.Context, queue string, ids []string) (int, error)
	// PurgeDead deletes the dead messages with these ids (all when ids is
	// nil). It returns how many were deleted.
	PurgeDead(ctx context.Context, queue string, ids []string) (int, error)
}
