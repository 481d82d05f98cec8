package sqlite

import (
	"context"

	"github.com/go-routing-service/routingservice/internal/store"
)

// HoldLease reports true: one Store holds the database file (its lock),
// so it holds every lease.
func (s *Store) HoldLease(context.Context, string) (bool, error) {
	if s.closed.Load() {
		return false, store.ErrClosed
	}
	return true, nil
}

// ReleaseLease has nothing to give up.
func (s *Store) ReleaseLease(context.Context, string) error { return nil }
