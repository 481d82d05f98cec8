package postgres

import (
	"context"
	"fmt"
	"hash/fnv"
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

// leaseConns are the connections holding each Store's leases, by lease
// name.
var leaseConns = struct {
	sync.Mutex
	m map[*Store]map[string]*leaseConn
}{m: map[*Store]map[string]*leaseConn{}}

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
	leaseConns.Lock()
	lc := leaseConns.m[s][name]
	leaseConns.Unlock()
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
	// (freeing the lock) when the lease is released or the Store closes.
	lc := &leaseConn{conn: pc.Hijack(), done: make(chan struct{})}
	leaseConns.Lock()
	if leaseConns.m[s] == nil {
		leaseConns.m[s] = map[string]*leaseConn{}
	}
	leaseConns.m[s][name] = lc
	leaseConns.Unlock()
	go s.closeLeaseWithStore(name, lc)
	return true, nil
}

// closeLeaseWithStore releases the lease when the Store closes, if it is
// not released before.
func (s *Store) closeLeaseWithStore(name string, lc *leaseConn) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-lc.done:
			return
		case <-t.C:
			if s.closed.Load() {
				lc.mu.Lock()
				s.dropLease(name, lc)
				lc.mu.Unlock()
				return
			}
		}
	}
}

// dropLease closes lc's connection, which frees its lock, and forgets it;
// lc.mu is held.
func (s *Store) dropLease(name string, lc *leaseConn) {
	leaseConns.Lock()
	if leaseConns.m[s][name] == lc {
		delete(leaseConns.m[s], name)
		if len(leaseConns.m[s]) == 0 {
			delete(leaseConns.m, s)
		}
	}
	leaseConns.Unlock()
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
	leaseConns.Lock()
	lc := leaseConns.m[s][name]
	leaseConns.Unlock()
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
