package sqlite

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

const (
	// maxPage caps Pending's limit (the client contract's maximum).
	maxPage = 500
	// idChunk is the number of ids one statement with an IN list takes (a
	// tombstone lookup of PutMessages; a lookup or DELETE of Ack): more
	// than a full group-commit batch (DefaultMaxBatch), far fewer than
	// SQLite's limit of 32766 parameters.
	idChunk = 1000
	// retentionChunk is the number of rows one DELETE of DeleteBefore takes,
	// so that retention never holds the write lock for long.
	retentionChunk = 5000
)

// Pending returns up to limit (at most 500) of recipient's envelopes stored
// after cursor, in store order.
func (s *Store) Pending(ctx context.Context, recipient, cursor string, limit int) (store.Page, error) {
	return s.PendingWithin(ctx, recipient, cursor, limit, 0)
}

// PendingWithin returns up to limit (at most 500) of recipient's envelopes
// stored after cursor, in store order, ending before the envelope that
// would take their payload bytes past maxBytes (maxBytes <= 0: no bound);
// the first envelope is returned whatever its size. It reads the rows one
// at a time and stops at the first that does not fit, so it never holds
// more than the page and that one.
func (s *Store) PendingWithin(ctx context.Context, recipient, cursor string, limit, maxBytes int) (store.Page, error) {
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
	bytes := 0
	for rows.Next() {
		if len(page.Envelopes) == limit {
			page.Next = store.EncodeCursor(lastSeq)
			break
		}
		e := &envelope.Envelope{Recipient: recipient}
		var seq, ms int64
		if err := rows.Scan(&seq, &e.ID, &e.Sender, &e.Type, &e.Payload, &e.Ephemeral, &ms); err != nil {
			return store.Page{}, s.wrap("pending: scan", err)
		}
		bytes += len(e.Payload)
		if maxBytes > 0 && bytes > maxBytes && len(page.Envelopes) > 0 {
			page.Next = store.EncodeCursor(lastSeq)
			break
		}
		lastSeq = seq
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

// PendingCount returns recipient's number of stored envelopes, from the
// ledger.
func (s *Store) PendingCount(ctx context.Context, recipient string) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	return s.ledger.pending(recipient), nil
}

// SenderPending returns what sender has pending, from the ledger.
func (s *Store) SenderPending(ctx context.Context, sender string) (store.SenderCount, error) {
	if s.closed.Load() {
		return store.SenderCount{}, store.ErrClosed
	}
	return s.ledger.sender(sender), nil
}

// PendingTotal implements store.PendingCounts, from the ledger.
func (s *Store) PendingTotal(ctx context.Context) (int64, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	return s.ledger.pendingTotal(), nil
}

// unroutedChunk bounds the seqs one query of Unrouted binds.
const unroutedChunk = 500

// Unrouted returns up to limit envelopes not routed and created before
// before, in store order: the ledger names them, and they are read by
// seq (an envelope acknowledged in between is left out).
func (s *Store) Unrouted(ctx context.Context, before time.Time, limit int) ([]*envelope.Envelope, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	if limit <= 0 {
		return nil, nil
	}
	seqs := s.ledger.unrouted(cutoffMillis(before), limit)
	var out []*envelope.Envelope
	for len(seqs) > 0 {
		chunk := seqs[:min(len(seqs), unroutedChunk)]
		seqs = seqs[len(chunk):]
		args := make([]any, len(chunk))
		for i, seq := range chunk {
			args[i] = seq
		}
		rows, err := s.r.QueryContext(ctx, `SELECT id, sender, recipient, type, payload, ephemeral, created_at
			FROM messages WHERE seq IN (?`+strings.Repeat(",?", len(chunk)-1)+`) ORDER BY seq`, args...)
		if err != nil {
			return nil, s.wrap("unrouted", err)
		}
		for rows.Next() {
			e := &envelope.Envelope{}
			var ms int64
			if err := rows.Scan(&e.ID, &e.Sender, &e.Recipient, &e.Type, &e.Payload, &e.Ephemeral, &ms); err != nil {
				rows.Close()
				return nil, s.wrap("unrouted: scan", err)
			}
			if e.Payload == nil {
				e.Payload = []byte{}
			}
			e.CreatedAt = fromMillis(ms)
			out = append(out, e)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, s.wrap("unrouted", err)
		}
	}
	return out, nil
}

// DeleteBefore deletes envelopes created before t, in short transactions
// of at most 5000 rows, and returns how many it deleted. Each transaction
// runs between the group-commit writer's, and the ledger takes the rows
// it deleted (RETURNING) once it committed.
func (s *Store) DeleteBefore(ctx context.Context, t time.Time) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	cut := cutoffMillis(t)
	total := 0
	for {
		n, err := s.deleteChunkBefore(ctx, cut)
		total += n
		if err != nil {
			return total, err
		}
		if n < retentionChunk {
			return total, nil
		}
	}
}

// deleteChunkBefore deletes up to retentionChunk envelopes created before
// cut (Unix milliseconds) in one transaction, and applies the rows it
// deleted to the ledger.
func (s *Store) deleteChunkBefore(ctx context.Context, cut int64) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.wrap("retention: begin", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `DELETE FROM messages
		WHERE seq IN (SELECT seq FROM messages WHERE created_at < ? LIMIT ?)
		RETURNING seq, id, recipient, sender, length(payload)`, cut, retentionChunk)
	if err != nil {
		return 0, s.wrap("retention", err)
	}
	var changes []change
	for rows.Next() {
		c := change{deleted: true}
		if err := rows.Scan(&c.seq, &c.id, &c.recipient, &c.sender, &c.bytes); err != nil {
			rows.Close()
			return 0, s.wrap("retention", err)
		}
		changes = append(changes, c)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, s.wrap("retention", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, s.wrap("retention: commit", err)
	}
	s.ledger.apply(changes, nil)
	return len(changes), nil
}

// DeleteTombstonesBefore deletes the tombstones of acks made before t, in
// short transactions of at most 5000 rows, and returns how many it
// deleted.
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

// storedChunk bounds the ids one Stored query binds.
const storedChunk = 500

// Stored returns those of ids that are stored, looked up by id in chunks.
func (s *Store) Stored(ctx context.Context, ids []string) ([]string, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	var out []string
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), storedChunk)]
		ids = ids[len(chunk):]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		q := `SELECT id FROM messages WHERE id IN (?` + strings.Repeat(",?", len(chunk)-1) + `)`
		rows, err := s.r.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, s.wrap("stored", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, s.wrap("stored: scan", err)
			}
			out = append(out, id)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, s.wrap("stored", err)
		}
	}
	return out, nil
}
