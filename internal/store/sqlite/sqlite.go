// Package sqlite is the store.Store adapter on an SQLite file, through the
// pure-Go modernc.org/sqlite driver (no cgo).
//
// The database runs in WAL mode with synchronous=FULL: once PutMessages
// returns nil the envelopes are in the write-ahead log on disk and survive a
// crash or a power loss. Writes go through a single connection; reads use a
// separate pool and never wait for a writer. Concurrent PutMessages,
// PutNew, Ack and MarkRouted calls are grouped by one writer goroutine
// into a single transaction (group commit), so many small sends (with
// the claims of their idempotency records), the acks of those delivered
// and the routed marks of those sent before cost one fsync between them.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/groupcommit"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// DefaultMaxBatch is the number of items (envelopes to store, ids to ack,
// ids to mark routed) a group-commit transaction takes at most when
// Options.MaxBatch is zero.
const DefaultMaxBatch = 512

// busyTimeoutMS bounds how long a connection waits for a lock held by
// another connection (another process on the same file, or the reader pool
// during a checkpoint) before it fails.
const busyTimeoutMS = 10000

// Options tunes a Store. The zero value is ready to use.
type Options struct {
	// MaxBatch caps the items (envelopes to store, ids to ack, ids to mark
	// routed) written in one group-commit transaction (DefaultMaxBatch when
	// <= 0). A single PutMessages, Ack or MarkRouted call larger than
	// MaxBatch still commits in one transaction of its own.
	MaxBatch int
	// Logger receives the store's operational logs (slog.Default() when nil).
	// Payloads are never logged.
	Logger *slog.Logger
}

// Store is a store.Store on an SQLite file. It is safe for concurrent use.
type Store struct {
	w   *sql.DB // the single write connection
	r   *sql.DB // the read pool
	log *slog.Logger

	insert *sql.Stmt // prepared on w
	claim  *sql.Stmt // prepared on w
	in     inStmts   // prepared on w as the writer needs them

	// writer groups concurrent PutMessages, PutNew, Ack and MarkRouted
	// calls into one transaction; the result of each envelope put is
	// whether it had a tombstone, that of each new message whether it was
	// stored, that of each id acked whether it deleted the envelope.
	writer *groupcommit.Writer[write, bool]
	// The writer's reusable buffers (writer goroutine only): the IN-list
	// arguments, the ids acked in the current segment, the recipients of
	// the ids acked, the ids an ack deletes, and the arguments of a
	// tombstone insert.
	idArgs   []any
	segAcks  map[string]struct{}
	owners   map[string]string
	ackIDs   []string
	timeArgs []any

	// groupCommits counts the transactions the writer ran (for tests and
	// benchmarks: items per commit shows group commit).
	groupCommits atomic.Int64

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the SQLite database at path, applies the
// schema migrations it lacks and starts the group-commit writer. The caller
// must Close the returned Store.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if err := checkPathName(path); err != nil {
		return nil, fmt.Errorf("sqlite open: %w", err)
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	log := opts.Logger.With("component", "store", "engine", "sqlite")
	if err := ownerOnly(path); err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}

	common := url.Values{}
	common.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	common.Add("_pragma", "foreign_keys(1)")

	wq := cloneValues(common)
	wq.Add("_pragma", "journal_mode(WAL)")
	wq.Add("_pragma", "synchronous(FULL)")
	wq.Set("_txlock", "immediate")
	w, err := sql.Open("sqlite", path+"?"+wq.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	if err := checkJournalMode(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	if err := migrate(ctx, w, log); err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}

	rq := cloneValues(common)
	rq.Add("_pragma", "query_only(1)")
	r, err := sql.Open("sqlite", path+"?"+rq.Encode())
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite open %s (read pool): %w", path, err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	if err := r.PingContext(ctx); err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("sqlite open %s (read pool): %w", path, err)
	}

	insert, err := w.PrepareContext(ctx, insertMessageSQL)
	if err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("sqlite open %s: prepare insert: %w", path, err)
	}
	claim, err := w.PrepareContext(ctx, claimSQL)
	if err != nil {
		insert.Close()
		w.Close()
		r.Close()
		return nil, fmt.Errorf("sqlite open %s: prepare claim: %w", path, err)
	}

	s := &Store{
		w:      w,
		r:      r,
		log:    log,
		insert: insert,
		claim:  claim,
	}
	s.writer = groupcommit.New(opts.MaxBatch, s.commit, log)
	return s, nil
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// checkJournalMode verifies that the database really is in WAL mode: the
// durability and reader/writer separation promised above depend on it.
func checkJournalMode(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("read journal_mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal_mode is %q, want wal", mode)
	}
	return nil
}

// Ping reports whether the database answers a query.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	var one int
	if err := s.r.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return s.wrap("ping", err)
	}
	return nil
}

// Close stops accepting writes, waits for the writer to commit every
// PutMessages, Ack and MarkRouted call it already took, and closes the
// database. Calls racing Close either complete or return store.ErrClosed.
// Close is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.writer.Close()
		s.closeErr = errors.Join(s.insert.Close(), s.claim.Close(), s.closeIn(), s.w.Close(), s.r.Close())
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("sqlite close: %w", s.closeErr)
		}
	})
	return s.closeErr
}

// wrap gives err the operation's context, and reports store.ErrClosed for
// an operation that failed because Close ran under it.
func (s *Store) wrap(op string, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("sqlite %s: %w", op, store.ErrClosed)
	}
	return fmt.Errorf("sqlite %s: %w", op, err)
}

// checkPathName refuses a path the driver's DSN cannot carry.
func checkPathName(path string) error {
	if path == "" || strings.ContainsAny(path, "?#") {
		return fmt.Errorf("path %q must be a non-empty file path without '?' or '#'", path)
	}
	return nil
}

// ownerOnly creates the database file with mode 0600 if it does not exist,
// and sets that mode on it and on its WAL and shared-memory files if they
// do (files made by an older version). SQLite gives the WAL and
// shared-memory files it creates the database file's mode.
func ownerOnly(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
