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
//
// A file is served by one Store, in one process: Open takes an exclusive
// lock on it (a lock file beside it, on Unix) and a second Open fails
// while the first Store is open. That makes the Store's writer the only
// writer of the file, and it keeps in memory (the ledger, rebuilt at
// Open) what it would otherwise write per message:
//
//   - On disk: the messages (table messages and its indexes: id, (recipient,
//     seq), created_at), the tombstones, the idempotency records, the push
//     targets, and the routed watermark: the highest seq such that every
//     message at or below it was routed (table routed_watermark, one row,
//     moved in the transaction of the writes that move it).
//   - In memory: the pending counts per recipient and per sender (messages
//     and payload bytes) and their total, updated after each commit from
//     the rows it stored and deleted (acks and retention alike), rebuilt at
//     Open with one GROUP BY; and the messages not routed yet (id, seq,
//     created_at; the envelope stays on disk), those stored and neither
//     marked routed nor deleted since, rebuilt at Open from the messages
//     above the watermark.
//
// PendingCount, SenderPending and PendingTotal read memory only; Unrouted
// reads the ledger, then the envelopes it names by seq. MarkRouted writes
// nothing per message: a crash leaves the messages stored after the last
// watermark written to the sweep, which routes them again (as it routes
// those stored and not marked before a crash). Migration 0009 moved the
// counts and the marks off disk.
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

// ErrInUse is returned by Open when another Store, in this process or
// another, has the database open: a file is served by one Store at a time
// (see the package comment).
var ErrInUse = errors.New("the database is in use by another process (or another store in this one); an SQLite store is served by one process at a time")

// busyTimeoutMS bounds how long a connection waits for a lock held by
// another connection (the reader pool during a checkpoint) before it
// fails.
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

	// wc is the write connection as the writer uses it (see wconn).
	wc wconn

	// lock holds the file's exclusive lock (nil where there is none).
	lock *os.File

	// ledger is what the store keeps in memory of its messages (see the
	// package comment).
	ledger *ledger
	// writeMu orders the writer's commits and the retention's deletes
	// with the ledger's updates: each applies what it committed before
	// the next begins. It also guards watermark.
	writeMu sync.Mutex
	// watermark is the routed watermark on disk.
	watermark int64

	// writer groups concurrent PutMessages, PutNew, Ack and MarkRouted
	// calls into one transaction; the result of each envelope put is
	// whether it had a tombstone, that of each new message whether it was
	// stored, that of each id acked whether it deleted the envelope.
	writer *groupcommit.Writer[groupcommit.Item, bool]
	// Messages are the Store's PutMessages, PutNew, MarkRouted and Ack,
	// through writer: the writes of a call are committed (durably) in one
	// transaction with those of the calls waiting at the same time, a
	// new message's claim of its idempotency record in the transaction
	// that stores it. MarkRouted's marks are kept in memory (the ledger):
	// Unrouted leaves the envelopes out from the moment it returns. What
	// the disk keeps is the routed watermark (see migration 0009), which
	// the writer moves in the transaction of the writes waiting at the
	// same time, or in one of its own when a MarkRouted call comes alone
	// and moves it; a mark of an envelope above the watermark is not on
	// disk, and a crash leaves that envelope to the sweep, which routes it
	// again. MarkRouted returns once its marks are applied.
	groupcommit.Messages
	// TargetStore is the Store's Targets, on targetTable.
	store.TargetStore
	// The writer's reusable buffers (writer goroutine only): the ids acked
	// in the current segment, the rows of the ids acked, the ids the
	// current commit stored or deleted before its acks, the rows the
	// current commit stored and deleted, and its routed marks.
	segAcks map[string]struct{}
	owners  map[string]ackRow
	touched map[string]struct{}
	changes []change
	marks   []string

	// groupCommits counts the transactions the writer ran (for tests and
	// benchmarks: items per commit shows group commit).
	groupCommits atomic.Int64

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the SQLite database at path, locks it
// for this Store, applies the schema migrations it lacks, rebuilds the
// ledger and starts the group-commit writer. It fails if another Store
// (in this process or another) has the file open. The caller must Close
// the returned Store.
func Open(ctx context.Context, path string, opts Options) (_ *Store, err error) {
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
	s := &Store{log: log}
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	if s.lock, err = lockFile(path); err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}

	common := url.Values{}
	common.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	common.Add("_pragma", "foreign_keys(1)")

	wq := cloneValues(common)
	wq.Add("_pragma", "journal_mode(WAL)")
	wq.Add("_pragma", "synchronous(FULL)")
	wq.Set("_txlock", "immediate")
	if s.w, err = sql.Open("sqlite", path+"?"+wq.Encode()); err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)

	if err := checkJournalMode(ctx, s.w); err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	if err := migrate(ctx, s.w, log); err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}

	rq := cloneValues(common)
	rq.Add("_pragma", "query_only(1)")
	if s.r, err = sql.Open("sqlite", path+"?"+rq.Encode()); err != nil {
		return nil, fmt.Errorf("sqlite open %s (read pool): %w", path, err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	s.r.SetMaxOpenConns(readers)
	s.r.SetMaxIdleConns(readers)
	if err := s.r.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("sqlite open %s (read pool): %w", path, err)
	}

	if s.ledger, s.watermark, err = loadLedger(ctx, s.w); err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	s.writer = groupcommit.New(opts.MaxBatch, s.commit, log)
	s.Messages = groupcommit.NewMessages(s.writer, "sqlite", &s.closed)
	s.TargetStore = store.NewTargetStore(targetTable{w: s.w, r: s.r}, "sqlite", &s.closed)
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
// PutMessages, Ack and MarkRouted call it already took, closes the
// database and releases the file's lock. Calls racing Close either
// complete or return store.ErrClosed. Close is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.writer.Close()
		s.closeErr = s.closeAll()
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("sqlite close: %w", s.closeErr)
		}
	})
	return s.closeErr
}

// closeAll closes what Open opened (what it got to), the lock last.
func (s *Store) closeAll() error {
	var errs []error
	if s.w != nil && s.wc.dc != nil {
		errs = append(errs, s.onWriteConn(context.Background(), func(c *wconn) error { return c.close() }))
	}
	for _, db := range []*sql.DB{s.w, s.r} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	return errors.Join(errs...)
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
// and sets that mode on it and on its WAL, shared-memory and lock files if
// they do (files made by an older version). SQLite gives the WAL and
// shared-memory files it creates the database file's mode.
func ownerOnly(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-lock"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
