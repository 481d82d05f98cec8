// Package presence is the port to the presence registry: for each user, which
// realtime instances hold live connections of theirs.
//
// Entries are kept per connection and expire unless refreshed, so the
// connections of a crashed instance disappear on their own after the TTL.
//
// Adapters live in sub-packages (memory, redis) and pass the conformance
// suite in presencetest.
package presence

import (
	"context"
	"errors"
)

// ErrClosed is returned by operations on a closed registry.
var ErrClosed = errors.New("presence closed")

// Conn names one live connection.
type Conn struct {
	User     string
	Instance string
	ID       string // unique within the instance
}

// Presence is the presence registry. Its TTL is fixed when it is made.
type Presence interface {
	// Add registers c; it expires after the TTL unless refreshed.
	Add(ctx context.Context, c Conn) error
	// Remove unregisters c.
	Remove(ctx context.Context, c Conn) error
	// Refresh extends the TTL of the given connections (a heartbeat; one
	// call for all of an instance's connections).
	Refresh(ctx context.Context, conns []Conn) error
	// Instances returns the distinct instances that hold at least one
	// unexpired connection of user, in no particular order.
	Instances(ctx context.Context, user string) ([]string, error)
	// InstancesOf is Instances of each of users (out[i] is users[i]'s), in
	// one round trip to a remote registry.
	InstancesOf(ctx context.Context, users []string) ([][]string, error)
	// Ping reports whether the registry answers.
	Ping(ctx context.Context) error
	// Close releases resources.
	Close() error
}
