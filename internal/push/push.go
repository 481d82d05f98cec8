// Package push is the port to push notification providers and the
// dispatcher that wakes an offline recipient's devices.
//
// A notification never carries payload content: at most the message id and
// its type. Providers live in sub-packages (fcm, apns, webpush).
package push

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/store"
)

// Notification is what a push says: that recipient has a pending message.
type Notification struct {
	Recipient string
	MessageID string
	Type      string
	// Trace, when valid, is the span of the message's routing: the
	// dispatch and each send are traced under it.
	Trace trace.SpanContext
}

// ErrTargetGone is wrapped by Sender errors that mean the target no longer
// exists (unregistered token, expired subscription): it is removed.
var ErrTargetGone = errors.New("push target gone")

// Sender sends one notification to one target of its platform.
type Sender interface {
	// Platforms lists the store.Target platforms this sender serves.
	Platforms() []string
	// Send delivers n to t. It wraps ErrTargetGone when the provider says
	// the target is gone. It handles the provider's retries itself.
	Send(ctx context.Context, t store.Target, n Notification) error
}
