package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// churnTables are the tables every message writes: their rows are
// short-lived (stored, then deleted at the ack) or updated in place many
// times a second. The store vacuums them itself (see VacuumOptions).
var churnTables = []string{"messages", "pending_counts", "sender_counts", "idempotency", "tombstones"}

// VacuumOptions sets how the store vacuums its own high-churn tables.
//
// PostgreSQL's autovacuum looks at a database at most once a minute
// (autovacuum_naptime, a server-wide setting), and not at all where it is
// off: a queue table that turns over thousands of rows a second collects
// a minute's dead rows, or all of them, in between, and the statements
// that walk them (the ack's delete, the backlog's page, the sweep) slow
// down with every one. The store checks its tables' dead rows every
// Interval and vacuums (VACUUM (ANALYZE, SKIP_LOCKED)) a table holding at
// least DeadRows dead rows and at least one dead row in twenty live ones,
// whatever autovacuum does: a table autovacuum is working on is skipped.
// One instance vacuums at a time (a session advisory lock per schema);
// every instance reads the tables' statistics for its metrics.
type VacuumOptions struct {
	// Interval is the time between checks; <= 0: the store never vacuums
	// (nor reads the statistics).
	Interval time.Duration
	// DeadRows is the fewest dead rows a table is vacuumed for
	// (DefaultVacuumDeadRows when <= 0).
	DeadRows int64
}

// DefaultVacuumDeadRows is VacuumOptions.DeadRows when unset.
const DefaultVacuumDeadRows = 5000

// TableStats is what PostgreSQL's statistics say of one of the store's
// tables, as last read by the store.
type TableStats struct {
	Table    string
	LiveRows int64
	DeadRows int64
	Bytes    int64 // the table with its indexes and TOAST
	// SinceVacuum is the time since the table's last vacuum (by anyone:
	// the store, autovacuum or an operator); negative when it never was.
	SinceVacuum time.Duration
	// Vacuums counts the vacuums this store ran on the table.
	Vacuums int64
}

// maintenance is the store's vacuuming loop and what it last read.
type maintenance struct {
	opts VacuumOptions
	done chan struct{}
	// passes counts the checks made (whether they vacuumed or not).
	passes atomic.Int64

	mu      sync.Mutex
	stats   []TableStats
	vacuums map[string]int64
}

// TableStats returns the statistics of the store's high-churn tables as
// last read (every VacuumOptions.Interval), in table order; nil before the
// first read or without vacuuming.
func (s *Store) TableStats() []TableStats {
	m := s.maint
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.stats)
}

// vacuumLockKey is the advisory lock that lets one process at a time
// vacuum schema's tables.
func vacuumLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("routingservice store vacuum\x00"))
	h.Write([]byte(schema))
	return int64(h.Sum64())
}

// maintain checks and vacuums the tables every Interval until ctx ends.
func (s *Store) maintain(ctx context.Context) {
	defer close(s.maint.done)
	t := time.NewTicker(s.maint.opts.Interval)
	defer t.Stop()
	for {
		if err := s.maintainOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("store maintenance failed; tried again at the next check", "err", err)
		}
		s.maint.passes.Add(1)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// statsSQL reads the statistics of the schema's tables.
const statsSQL = `SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid),
	COALESCE(EXTRACT(EPOCH FROM now() - GREATEST(last_vacuum, last_autovacuum)), -1)::float8
FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY($2)`

// maintainOnce reads the tables' statistics and, if it gets the schema's
// vacuum lock, vacuums those past the threshold, on one connection.
func (s *Store) maintainOnce(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	stats, err := s.readStats(ctx, conn.Conn())
	if err != nil {
		return err
	}
	m := s.maint
	var due []string
	for _, t := range stats {
		if t.DeadRows >= m.opts.DeadRows && t.DeadRows*20 >= t.LiveRows {
			due = append(due, t.Table)
		}
	}
	if len(due) == 0 {
		return nil
	}
	key := vacuumLockKey(s.schema)
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&locked); err != nil {
		return fmt.Errorf("vacuum lock: %w", err)
	}
	if !locked {
		return nil // another instance vacuums
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key); err != nil {
			// The lock is the connection's: drop the connection rather
			// than return it to the pool still holding it.
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	for _, table := range due {
		start := time.Now()
		q := "VACUUM (ANALYZE, SKIP_LOCKED) " + pgx.Identifier{s.schema, table}.Sanitize()
		if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vacuum %s: %w", table, err)
		}
		m.mu.Lock()
		m.vacuums[table]++
		m.mu.Unlock()
		s.log.Debug("store vacuumed a table", "table", table, "took", time.Since(start).Round(time.Millisecond))
	}
	// The statistics after the vacuums, for the metrics.
	_, err = s.readStats(ctx, conn.Conn())
	return err
}

// readStats reads the statistics of the churn tables and keeps them for
// TableStats.
func (s *Store) readStats(ctx context.Context, conn *pgx.Conn) ([]TableStats, error) {
	rows, err := conn.Query(ctx, statsSQL, s.schema, churnTables)
	if err != nil {
		return nil, fmt.Errorf("table statistics: %w", err)
	}
	var stats []TableStats
	for rows.Next() {
		var t TableStats
		var since float64
		if err := rows.Scan(&t.Table, &t.LiveRows, &t.DeadRows, &t.Bytes, &since); err != nil {
			rows.Close()
			return nil, fmt.Errorf("table statistics: %w", err)
		}
		t.SinceVacuum = -1
		if since >= 0 {
			t.SinceVacuum = time.Duration(since * float64(time.Second))
		}
		stats = append(stats, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("table statistics: %w", err)
	}
	slices.SortFunc(stats, func(a, b TableStats) int {
		return slices.Index(churnTables, a.Table) - slices.Index(churnTables, b.Table)
	})
	m := s.maint
	m.mu.Lock()
	for i := range stats {
		stats[i].Vacuums = m.vacuums[stats[i].Table]
	}
	m.stats = stats
	m.mu.Unlock()
	return stats, nil
}
