package postgres

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/store"
)

// A lease is a session advisory lock, keyed by the schema and the lease's
// name, held on a connection of its own (taken out of the pool): the
// server frees it when that connection ends, so a holder that dies (its
// process, or its link to the database) gives it up without a word, and
// another Store's next HoldLease takes it. A holder that keeps its
// connection keeps its lease.
//
// Advisory locks are per session: a connection pooler in transaction mode
// (PgBouncer) in front of the database would hand the lock to whichever
// session runs the statement; the lease needs a direct connection (or a
// pooler in session mode).

// leaseKey is the advisory lock of the lease called name in schema.
func leaseKey(schema, name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("routingservice lease\x00"))
	h.Write([]byte(schema))
	h.Write([]byte{0})
	h.Write([]byte(name))
	return int64(h.Sum64())
}

// leaseSet is the connections holding a Store's leases, by lease name.
type leaseSet struct {
	mu sync.Mutex
	m  map[string]*leaseConn
}

// leaseConn is the connection one held lease lives on; done is closed
// when it is released.
type leaseConn struct {
	mu   sync.Mutex
	conn *pgx.Conn
	done chan struct{}
}

// leaseCheckTimeout bounds the check that a held lease's connection is
// alive.
const leaseCheckTimeout = 5 * time.Second

// HoldLease takes the lease called name (pg_try_advisory_lock on a
// connection of its own), or checks that the connection holding it is
// alive. See store.Leases.
func (s *Store) HoldLease(ctx context.Context, name string) (bool, error) {
	if s.closed.Load() {
		return false, store.ErrClosed
	}
	s.leases.mu.Lock()
	lc := s.leases.m[name]
	s.leases.mu.Unlock()
	if lc != nil {
		lc.mu.Lock()
		defer lc.mu.Unlock()
		if lc.conn == nil {
			return false, nil // released meanwhile
		}
		cctx, cancel := context.WithTimeout(ctx, leaseCheckTimeout)
		defer cancel()
		// A session's advisory lock lasts as long as the session: a
		// connection that answers still holds it.
		err := lc.conn.Ping(cctx)
		if err == nil {
			return true, nil
		}
		// The connection, and with it the lock, is gone: drop it, and
		// take the lease anew below (another Store may have it by now).
		s.dropLease(name, lc)
		if ctx.Err() != nil {
			return false, s.wrap("hold lease", err)
		}
	}
	return s.takeLease(ctx, name)
}

// takeLease tries to take the lease on a new connection.
func (s *Store) takeLease(ctx context.Context, name string) (bool, error) {
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return false, s.wrap("hold lease", err)
	}
	var got bool
	if err := pc.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, leaseKey(s.schema, name)).Scan(&got); err != nil {
		pc.Release()
		return false, s.wrap("hold lease", err)
	}
	if !got {
		pc.Release() // it holds nothing: back to the pool
		return false, nil
	}
	// The connection now holds the lock: it leaves the pool, to be closed
	// (freeing the lock) when the lease is released or the Store closes
	// (dropLeases).
	lc := &leaseConn{conn: pc.Hijack(), done: make(chan struct{})}
	s.leases.mu.Lock()
	if s.leases.m == nil {
		s.leases.m = map[string]*leaseConn{}
	}
	s.leases.m[name] = lc
	s.leases.mu.Unlock()
	if s.closed.Load() { // Close may have dropped the leases before this one
		lc.mu.Lock()
		s.dropLease(name, lc)
		lc.mu.Unlock()
		return false, store.ErrClosed
	}
	return true, nil
}

// dropLeases releases every lease the Store holds (Close).
func (s *Store) dropLeases() {
	s.leases.mu.Lock()
	held := maps.Clone(s.leases.m)
	s.leases.mu.Unlock()
	for name, lc := range held {
		lc.mu.Lock()
		s.dropLease(name, lc)
		lc.mu.Unlock()
	}
}

// dropLease closes lc's connection, which frees its lock, and forgets it;
// lc.mu is held.
func (s *Store) dropLease(name string, lc *leaseConn) {
	s.leases.mu.Lock()
	if s.leases.m[name] == lc {
		delete(s.leases.m, name)
	}
	s.leases.mu.Unlock()
	if lc.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaseCheckTimeout)
	defer cancel()
	_ = lc.conn.Close(ctx)
	lc.conn = nil
	close(lc.done)
}

// ReleaseLease frees the lease called name if this Store holds it.
func (s *Store) ReleaseLease(ctx context.Context, name string) error {
	s.leases.mu.Lock()
	lc := s.leases.m[name]
	s.leases.mu.Unlock()
	if lc == nil {
		return nil
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.conn == nil {
		return nil
	}
	uctx, cancel := context.WithTimeout(ctx, leaseCheckTimeout)
	defer cancel()
	var unlocked bool
	err := lc.conn.QueryRow(uctx, `SELECT pg_advisory_unlock($1)`, leaseKey(s.schema, name)).Scan(&unlocked)
	s.dropLease(name, lc) // closing the connection frees it anyway
	if err != nil {
		return fmt.Errorf("postgres release lease %s: %w (its connection is closed, which frees it)", name, err)
	}
	return nil
}
