package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

const (
	// maxPage caps Pending's limit (the client contract's maximum).
	maxPage = 500
	// idChunk is the number of ids one statement with an IN list takes (a
	// DELETE of Ack, a tombstone lookup of PutMessages, an UPDATE of
	// MarkRouted): more than a full group-commit batch (DefaultMaxBatch),
	// far fewer than SQLite's limit of 32766 parameters.
	idChunk = 1000
	// retentionChunk is the number of rows one DELETE of DeleteBefore takes,
	// so that retention never holds the write lock for long.
	retentionChunk = 5000
)

// insertMessageSQL stores one envelope, not routed, unless its id is stored.
const insertMessageSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed)
VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING`

// markRoutedSQL, followed by an IN list, marks stored envelopes routed. It
// leaves rows already routed alone, so that a repeated mark writes nothing.
const markRoutedSQL = `UPDATE messages SET routed = 1 WHERE routed = 0 AND id IN (`

// write is one item of the group-commit writer: an envelope that
// PutMessages stores or, when env is nil, the id of an envelope that
// MarkRouted marks routed.
type write struct {
	env    *envelope.Envelope
	routed string
}

// PutMessages stores envs, not routed, idempotently on id, in the order
// given, except those whose id has a tombstone (acked[i] true; see
// store.Messages). It returns once the transaction holding them committed
// (durably), or with ctx's error if ctx ends first, in which case they may
// or may not have been stored.
func (s *Store) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	if len(envs) == 0 {
		return nil, nil
	}
	items := make([]write, len(envs))
	for i, e := range envs {
		if e == nil || e.ID == "" {
			return nil, fmt.Errorf("sqlite put: envelope %d has no id", i)
		}
		items[i].env = e
	}
	acked := make([]bool, len(envs))
	err := s.writer.Submit(ctx, items, acked)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr { // Submit returns ctx.Err() itself
		return nil, fmt.Errorf("sqlite put: %w", err)
	}
	if err != nil || !slices.Contains(acked, true) {
		return nil, err
	}
	return acked, nil
}

// MarkRouted marks the stored envelopes with these ids routed, ignoring
// ids not stored. The group-commit writer commits the marks together with
// the PutMessages and MarkRouted calls waiting at the same time; it returns
// once they are committed (durably), or with ctx's error if ctx ends first,
// in which case they may or may not be.
func (s *Store) MarkRouted(ctx context.Context, ids []string) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if len(ids) == 0 {
		return nil
	}
	items := make([]write, len(ids))
	for i, id := range ids {
		items[i].routed = id
	}
	err := s.writer.Submit(ctx, items, nil)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr { // Submit returns ctx.Err() itself
		return fmt.Errorf("sqlite mark routed: %w", err)
	}
	return err
}

// commit writes items in one transaction: it stores the envelopes, except
// those with a tombstone, which it marks in acked, then marks the ids to
// mark routed (after the inserts, so that an id stored and marked in the
// same batch ends up routed). It is the group-commit writer's CommitFunc:
// it runs on the writer goroutine only. The transaction is immediate (it
// takes the database's write lock at BEGIN), so no Ack, of this process or
// another, can commit between the tombstone lookup and the inserts.
func (s *Store) commit(items []write, acked []bool) error {
	s.groupCommits.Add(1)
	// The batch belongs to several callers: no single caller's context may
	// abort it. busy_timeout bounds how long it can wait for a lock.
	ctx := context.Background()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap("write: begin", err)
	}
	defer tx.Rollback()
	gone, err := s.tombstoned(ctx, tx, items)
	if err != nil {
		return err
	}
	var stmt *sql.Stmt
	marks := 0
	for i, w := range items {
		e := w.env
		if e == nil {
			marks++
			continue
		}
		if _, ok := gone[e.ID]; ok {
			acked[i] = true
			continue
		}
		if stmt == nil {
			stmt = tx.StmtContext(ctx, s.insert)
		}
		payload := e.Payload
		if payload == nil {
			payload = []byte{}
		}
		if _, err := stmt.ExecContext(ctx, e.ID, e.Sender, e.Recipient, e.Type, payload, e.Ephemeral, toMillis(e.CreatedAt)); err != nil {
			return s.wrap("put "+e.ID, err)
		}
	}
	if marks > 0 {
		if err := s.markRouted(ctx, tx, items); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return s.wrap("write: commit", err)
	}
	return nil
}

// tombstoned returns the ids of the envelopes among items that have a
// tombstone (nil when none has), looked up with one statement per idChunk
// ids.
func (s *Store) tombstoned(ctx context.Context, tx *sql.Tx, items []write) (map[string]struct{}, error) {
	var gone map[string]struct{}
	err := s.inChunks(items, func(w write) (string, bool) {
		if w.env == nil {
			return "", false
		}
		return w.env.ID, true
	}, func(args []any) error {
		rows, err := tx.QueryContext(ctx, "SELECT id FROM tombstones WHERE id IN ("+placeholders(len(args))+")", args...)
		if err != nil {
			return s.wrap("put: tombstone lookup", err)
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return s.wrap("put: tombstone lookup", err)
			}
			if gone == nil {
				gone = make(map[string]struct{})
			}
			gone[id] = struct{}{}
		}
		if err := rows.Err(); err != nil {
			return s.wrap("put: tombstone lookup", err)
		}
		return nil
	})
	return gone, err
}

// markRouted marks the ids to mark among items routed, with one statement
// per idChunk ids.
func (s *Store) markRouted(ctx context.Context, tx *sql.Tx, items []write) error {
	return s.inChunks(items, func(w write) (string, bool) {
		return w.routed, w.env == nil
	}, func(args []any) error {
		if _, err := tx.ExecContext(ctx, markRoutedSQL+placeholders(len(args))+")", args...); err != nil {
			return s.wrap(fmt.Sprintf("mark %d routed", len(args)), err)
		}
		return nil
	})
}

// inChunks calls run with the ids that id picks from items, idChunk at a
// time, in the writer's reusable argument buffer. It runs on the writer
// goroutine only.
func (s *Store) inChunks(items []write, id func(write) (string, bool), run func(args []any) error) error {
	args := s.idArgs[:0]
	defer func() {
		clear(args[:cap(args)]) // drop references to the ids
		s.idArgs = args[:0]
	}()
	for _, w := range items {
		v, ok := id(w)
		if !ok {
			continue
		}
		args = append(args, v)
		if len(args) == idChunk {
			if err := run(args); err != nil {
				return err
			}
			args = args[:0]
		}
	}
	if len(args) > 0 {
		return run(args)
	}
	return nil
}

// placeholders returns n comma-separated '?'s (n >= 1).
func placeholders(n int) string {
	if n == 1 {
		return "?"
	}
	return "?" + strings.Repeat(",?", n-1)
}

// Pending returns up to limit (at most 500) of recipient's envelopes stored
// after cursor, in store order.
func (s *Store) Pending(ctx context.Context, recipient, cursor string, limit int) (store.Page, error) {
	if s.closed.Load() {
		return store.Page{}, store.ErrClosed
	}
	after, err := store.DecodeCursor(cursor)
	if err != nil {
		return store.Page{}, fmt.Errorf("sqlite pending: %w", err)
	}
	limit = min(max(limit, 1), maxPage)
	rows, err := s.r.QueryContext(ctx, `SELECT seq, id, sender, type, payload, ephemeral, created_at
		FROM messages WHERE recipient = ? AND seq > ? ORDER BY seq LIMIT ?`, recipient, after, limit+1)
	if err != nil {
		return store.Page{}, s.wrap("pending", err)
	}
	defer rows.Close()
	page := store.Page{Envelopes: make([]*envelope.Envelope, 0, min(limit, 64))}
	var lastSeq int64
	for rows.Next() {
		if len(page.Envelopes) == limit {
			page.Next = store.EncodeCursor(lastSeq)
			break
		}
		e := &envelope.Envelope{Recipient: recipient}
		var ms int64
		if err := rows.Scan(&lastSeq, &e.ID, &e.Sender, &e.Type, &e.Payload, &e.Ephemeral, &ms); err != nil {
			return store.Page{}, s.wrap("pending: scan", err)
		}
		if e.Payload == nil {
			e.Payload = []byte{}
		}
		e.CreatedAt = fromMillis(ms)
		page.Envelopes = append(page.Envelopes, e)
	}
	if err := rows.Err(); err != nil {
		return store.Page{}, s.wrap("pending", err)
	}
	return page, nil
}

// Unrouted returns up to limit envelopes not routed and created before
// before, in store order.
func (s *Store) Unrouted(ctx context.Context, before time.Time, limit int) ([]*envelope.Envelope, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	if limit <= 0 {
		return nil, nil
	}
	// The partial index holds only unrouted rows, in store order: the
	// planner picks it today, and INDEXED BY keeps it from ever trading it
	// for messages_created_at, which would walk every routed row too.
	rows, err := s.r.QueryContext(ctx, `SELECT id, sender, recipient, type, payload, ephemeral, created_at
		FROM messages INDEXED BY messages_unrouted
		WHERE routed = 0 AND created_at < ? ORDER BY seq LIMIT ?`, cutoffMillis(before), limit)
	if err != nil {
		return nil, s.wrap("unrouted", err)
	}
	defer rows.Close()
	var out []*envelope.Envelope
	for rows.Next() {
		e := &envelope.Envelope{}
		var ms int64
		if err := rows.Scan(&e.ID, &e.Sender, &e.Recipient, &e.Type, &e.Payload, &e.Ephemeral, &ms); err != nil {
			return nil, s.wrap("unrouted: scan", err)
		}
		if e.Payload == nil {
			e.Payload = []byte{}
		}
		e.CreatedAt = fromMillis(ms)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("unrouted", err)
	}
	return out, nil
}

// Ack deletes recipient's envelopes with these ids, records a tombstone of
// each in the same transaction, and returns how many it deleted; other
// recipients' and unknown ids are ignored.
func (s *Store) Ack(ctx context.Context, recipient string, ids []string) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	if len(ids) == 0 {
		return 0, nil
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.wrap("ack: begin", err)
	}
	defer tx.Rollback()
	ackedAt := toMillis(time.Now())
	total := 0
	for start := 0; start < len(ids); start += idChunk {
		chunk := ids[start:min(start+idChunk, len(ids))]
		// args is (ackedAt, recipient, ids...); the DELETE takes args[1:].
		args := make([]any, 0, len(chunk)+2)
		args = append(args, ackedAt, recipient)
		for _, id := range chunk {
			args = append(args, id)
		}
		in := placeholders(len(chunk))
		// A tombstone left by an earlier ack of the same id (possible only
		// once the sweep removed it and the id was stored again) is renewed.
		if _, err := tx.ExecContext(ctx, `INSERT INTO tombstones (id, recipient, acked_at)
			SELECT id, recipient, ? FROM messages WHERE recipient = ? AND id IN (`+in+`)
			ON CONFLICT (id) DO UPDATE SET acked_at = excluded.acked_at`, args...); err != nil {
			return 0, s.wrap("ack: tombstones", err)
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM messages WHERE recipient = ? AND id IN ("+in+")", args[1:]...)
		if err != nil {
			return 0, s.wrap("ack", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, s.wrap("ack", err)
		}
		total += int(n)
	}
	if err := tx.Commit(); err != nil {
		return 0, s.wrap("ack: commit", err)
	}
	return total, nil
}

// DeleteBefore deletes envelopes created before t, in short transactions
// of at most 5000 rows, and returns how many it deleted.
func (s *Store) DeleteBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "retention",
		`DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE created_at < ? LIMIT ?)`, t)
}

// DeleteTombstonesBefore deletes the tombstones of acks made before t, in
// short transactions of at most 5000 rows, and returns how many it deleted.
func (s *Store) DeleteTombstonesBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "tombstone retention",
		`DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones WHERE acked_at < ? LIMIT ?)`, t)
}

// deleteInChunks runs query (with the cut-off and the chunk size as its
// arguments) until it deletes fewer rows than a chunk.
func (s *Store) deleteInChunks(ctx context.Context, op, query string, t time.Time) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	cut := cutoffMillis(t)
	total := 0
	for {
		res, err := s.w.ExecContext(ctx, query, cut, retentionChunk)
		if err != nil {
			return total, s.wrap(op, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, s.wrap(op, err)
		}
		total += int(n)
		if n < retentionChunk {
			return total, nil
		}
	}
}

// toMillis is the stored form of a time: Unix milliseconds (UTC by definition).
func toMillis(t time.Time) int64 { return t.UnixMilli() }

// fromMillis turns the stored form back into a UTC time.
func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// cutoffMillis is the smallest stored time that is not before t: a row is
// before t exactly when its stored milliseconds are below it.
func cutoffMillis(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}
