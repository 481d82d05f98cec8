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
	// DELETE of Ack, a tombstone lookup of PutMessages): more than a full
	// group-commit batch (DefaultMaxBatch), far fewer than SQLite's limit
	// of 32766 parameters.
	idChunk = 1000
	// retentionChunk is the number of rows one DELETE of DeleteBefore takes,
	// so that retention never holds the write lock for long.
	retentionChunk = 5000
)

const insertMessageSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`

// PutMessages stores envs, idempotently on id, in the order given, except
// those whose id has a tombstone (acked[i] true; see store.Messages). It
// returns once the transaction holding them committed (durably), or with
// ctx's error if ctx ends first, in which case they may or may not have
// been stored.
func (s *Store) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	if len(envs) == 0 {
		return nil, nil
	}
	for i, e := range envs {
		if e == nil || e.ID == "" {
			return nil, fmt.Errorf("sqlite put: envelope %d has no id", i)
		}
	}
	acked := make([]bool, len(envs))
	err := s.writer.Submit(ctx, envs, acked)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr { // Submit returns ctx.Err() itself
		return nil, fmt.Errorf("sqlite put: %w", err)
	}
	if err != nil || !slices.Contains(acked, true) {
		return nil, err
	}
	return acked, nil
}

// insertMessages writes envs in one transaction, except those with a
// tombstone, which it marks in acked. It is the group-commit writer's
// CommitFunc: it runs on the writer goroutine only. The transaction is
// immediate (it takes the database's write lock at BEGIN), so no Ack, of
// this process or another, can commit between the lookup and the inserts.
func (s *Store) insertMessages(envs []*envelope.Envelope, acked []bool) error {
	s.groupCommits.Add(1)
	// The batch belongs to several callers: no single caller's context may
	// abort it. busy_timeout bounds how long it can wait for a lock.
	ctx := context.Background()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap("put: begin", err)
	}
	defer tx.Rollback()
	gone, err := s.tombstoned(ctx, tx, envs)
	if err != nil {
		return err
	}
	stmt := tx.StmtContext(ctx, s.insert)
	for i, e := range envs {
		if _, ok := gone[e.ID]; ok {
			acked[i] = true
			continue
		}
		payload := e.Payload
		if payload == nil {
			payload = []byte{}
		}
		if _, err := stmt.ExecContext(ctx, e.ID, e.Sender, e.Recipient, e.Type, payload, e.Ephemeral, toMillis(e.CreatedAt)); err != nil {
			return s.wrap("put "+e.ID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.wrap("put: commit", err)
	}
	return nil
}

// tombstoned returns the ids of envs that have a tombstone (nil when none
// has), looked up with one statement per idChunk ids.
func (s *Store) tombstoned(ctx context.Context, tx *sql.Tx, envs []*envelope.Envelope) (map[string]struct{}, error) {
	var gone map[string]struct{}
	args := s.lookupArgs[:0]
	for start := 0; start < len(envs); start += idChunk {
		chunk := envs[start:min(start+idChunk, len(envs))]
		args = args[:0]
		for _, e := range chunk {
			args = append(args, e.ID)
		}
		rows, err := tx.QueryContext(ctx, "SELECT id FROM tombstones WHERE id IN ("+placeholders(len(chunk))+")", args...)
		if err != nil {
			return nil, s.wrap("put: tombstone lookup", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, s.wrap("put: tombstone lookup", err)
			}
			if gone == nil {
				gone = make(map[string]struct{})
			}
			gone[id] = struct{}{}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, s.wrap("put: tombstone lookup", err)
		}
	}
	clear(args[:cap(args)]) // drop references to the ids
	s.lookupArgs = args[:0]
	return gone, nil
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
