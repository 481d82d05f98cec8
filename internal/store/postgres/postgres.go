// Package postgres is the store.Store adapter on PostgreSQL, through pgx
// (pgxpool).
//
// All tables live in one schema (Options.Schema), created and migrated on
// Open under an advisory lock, so that several instances may start at once.
// Concurrent PutMessages, PutNew, Ack and MarkRouted calls are grouped by
// one writer goroutine into a single multi-row INSERT (with the claims of
// the new messages' idempotency records in the same statement, and the
// tombstone check of PutMessages' envelopes), a single DELETE of the
// acknowledged envelopes, with the tombstones they need, and a single
// UPDATE of the routed marks, sent in one round trip as one transaction
// (group commit): once PutMessages, PutNew or Ack returns nil its writes
// are committed.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/groupcommit"
)

// DefaultMaxBatch is the number of items (envelopes to store, ids to ack,
// ids to mark routed) a group-commit transaction takes at most when
// Options.MaxBatch is zero.
const DefaultMaxBatch = 1000

// writeTimeout bounds one group-commit statement, which no single caller's
// context governs.
const writeTimeout = 30 * time.Second

// Options tunes a Store. The zero value is ready to use.
type Options struct {
	// MaxBatch caps the items (envelopes to store, ids to ack, ids to mark
	// routed) written by one group-commit transaction (DefaultMaxBatch when
	// <= 0). A single PutMessages, Ack or MarkRouted call larger than
	// MaxBatch still commits in one transaction of its own.
	MaxBatch int
	// MaxConns caps the connection pool (pgxpool's default, or the URL's
	// pool_max_conns, when <= 0).
	MaxConns int32
	// Schema holds the store's tables ("public" when empty). It is created
	// if it does not exist.
	Schema string
	// Logger receives the store's operational logs (slog.Default() when nil).
	// Payloads are never logged.
	Logger *slog.Logger
	// Vacuum sets how the store vacuums its high-churn tables (off when
	// its Interval is zero).
	Vacuum VacuumOptions
}

// Store is a store.Store on PostgreSQL. It is safe for concurrent use.
type Store struct {
	pool   *pgxpool.Pool
	schema string
	log    *slog.Logger

	// leases are the connections holding this Store's leases (lease.go).
	leases leaseSet

	// writer groups concurrent PutMessages, PutNew, Ack and MarkRouted
	// calls into one transaction; the result of each envelope put is
	// whether it had a tombstone, that of each new message whether it was
	// stored, that of each id acked whether it deleted the envelope.
	writer *groupcommit.Writer[groupcommit.Item, bool]
	// Messages are the Store's PutMessages, PutNew, MarkRouted and Ack,
	// through writer: the writes of a call are committed in one
	// transaction with those of the calls waiting at the same time (see
	// commit), a new message's claim of its idempotency record in the
	// statement that stores it (insertClaimedSQL).
	groupcommit.Messages
	// TargetStore is the Store's Targets, on targetTable.
	store.TargetStore
	// cols is the writer's reusable statement argument buffer, segAcks
	// its set of the ids acked in the current segment, and claims its set
	// of the idempotency records claimed in the batch (writer goroutine
	// only).
	cols    batchColumns
	segAcks map[string]struct{}
	claims  map[string]struct{}

	// groupCommits counts the transactions the writer ran.
	groupCommits atomic.Int64

	// maint is the vacuuming loop (nil without one), stopped by Close
	// through stopMaint.
	maint     *maintenance
	stopMaint context.CancelFunc

	closed    atomic.Bool
	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at url, creates opts.Schema if needed,
// applies the migrations it lacks and starts the group-commit writer. The
// caller must Close the returned Store.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	cfg, err := poolConfig(url, opts)
	if err != nil {
		return nil, fmt.Errorf("postgres open: %w", err)
	}
	log := opts.Logger.With("component", "store", "engine", "postgres", "schema", opts.Schema)

	if err := migrate(ctx, cfg.ConnConfig, opts.Schema, log); err != nil {
		return nil, fmt.Errorf("postgres open: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres open: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres open: ping: %w", err)
	}
	s := &Store{
		pool:   pool,
		schema: opts.Schema,
		log:    log,
	}
	on, err := autovacuum(ctx, pool)
	switch {
	case opts.Vacuum.Interval > 0:
		s.maint = &maintenance{opts: opts.Vacuum, done: make(chan struct{}), vacuums: map[string]int64{}}
		mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		s.stopMaint = cancel
		go s.maintain(mctx)
		log.Info("store vacuums its high-churn tables itself", "every", opts.Vacuum.Interval,
			"dead_rows", opts.Vacuum.DeadRows, "server_autovacuum", on)
	case err == nil && !on:
		log.Warn("the server's autovacuum is off and so is the store's own vacuuming: the store's tables, whose rows are short-lived, grow without bound and writes slow down; turn either on (autovacuum = on, or store.postgres_vacuum_interval)")
	}
	s.writer = groupcommit.New(opts.MaxBatch, s.commit, log)
	s.Messages = groupcommit.NewMessages(s.writer, "postgres", &s.closed)
	s.TargetStore = store.NewTargetStore(targetTable{pool: s.pool, schema: s.schema}, "postgres", &s.closed)
	return s, nil
}

func (o Options) withDefaults() Options {
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.Schema == "" {
		o.Schema = "public"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Vacuum.DeadRows <= 0 {
		o.Vacuum.DeadRows = DefaultVacuumDeadRows
	}
	return o
}

// poolConfig is the connection settings of url and opts (with its
// defaults): every connection's search_path is the schema.
func poolConfig(url string, opts Options) (*pgxpool.Config, error) {
	if len(opts.Schema) > 63 {
		return nil, fmt.Errorf("schema name %.20q... is longer than 63 bytes", opts.Schema)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The parse error may quote the URL, password included: keep it out.
		return nil, errors.New("cannot parse the database URL")
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{opts.Schema}.Sanitize()
	return cfg, nil
}

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if err := s.pool.Ping(ctx); err != nil {
		return s.wrap("ping", err)
	}
	return nil
}

// Close stops accepting writes, waits for the writer to commit every
// PutMessages, Ack and MarkRouted call it already took, and closes the
// pool. Calls racing Close either complete or return store.ErrClosed.
// Close is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.writer.Close()
		if s.maint != nil {
			s.stopMaint()
			<-s.maint.done
		}
		s.dropLeases()
		s.pool.Close()
	})
	return nil
}

// wrap gives err the operation's context, and reports store.ErrClosed for
// an operation that failed because Close ran under it.
func (s *Store) wrap(op string, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("postgres %s: %w", op, store.ErrClosed)
	}
	return fmt.Errorf("postgres %s: %w", op, err)
}
