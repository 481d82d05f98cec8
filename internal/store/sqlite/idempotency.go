package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// ReserveIdempotency records rec unless (rec.Sender, rec.Key) has a record;
// then it returns that record and false. Reservations go through the single
// write connection in immediate transactions, so of concurrent calls for one
// key exactly one records.
func (s *Store) ReserveIdempotency(ctx context.Context, rec store.Idempotency) (store.Idempotency, bool, error) {
	if s.closed.Load() {
		return store.Idempotency{}, false, store.ErrClosed
	}
	e := rec.Envelope
	if e == nil {
		return store.Idempotency{}, false, fmt.Errorf("sqlite reserve %s: record has no envelope", rec.Key)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Idempotency{}, false, s.wrap("reserve: begin", err)
	}
	defer tx.Rollback()
	payload := e.Payload
	if payload == nil {
		payload = []byte{}
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO idempotency
		(sender, key, id, recipient, type, payload, ephemeral, created_at, published)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sender, key) DO NOTHING`,
		rec.Sender, rec.Key, e.ID, e.Recipient, e.Type, payload, e.Ephemeral, toMillis(e.CreatedAt), rec.Published)
	if err != nil {
		return store.Idempotency{}, false, s.wrap("reserve", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return store.Idempotency{}, false, s.wrap("reserve", err)
	}
	if n == 1 {
		if err := tx.Commit(); err != nil {
			return store.Idempotency{}, false, s.wrap("reserve: commit", err)
		}
		return rec, true, nil
	}
	got := store.Idempotency{Sender: rec.Sender, Key: rec.Key, Envelope: &envelope.Envelope{Sender: rec.Sender}}
	var ms int64
	ge := got.Envelope
	err = tx.QueryRowContext(ctx, `SELECT id, recipient, type, payload, ephemeral, created_at, published
		FROM idempotency WHERE sender = ? AND key = ?`, rec.Sender, rec.Key).
		Scan(&ge.ID, &ge.Recipient, &ge.Type, &ge.Payload, &ge.Ephemeral, &ms, &got.Published)
	if err != nil {
		return store.Idempotency{}, false, s.wrap("reserve: read existing", err)
	}
	if ge.Payload == nil {
		ge.Payload = []byte{}
	}
	ge.CreatedAt = fromMillis(ms)
	return got, false, nil
}

// MarkPublished marks the record of (sender, key) published; an unknown
// record is left unknown.
func (s *Store) MarkPublished(ctx context.Context, sender, key string) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if _, err := s.w.ExecContext(ctx, "UPDATE idempotency SET published = 1 WHERE sender = ? AND key = ?", sender, key); err != nil {
		return s.wrap("mark published", err)
	}
	return nil
}

// ReleaseIdempotency deletes the record of (sender, key) unless it is published.
func (s *Store) ReleaseIdempotency(ctx context.Context, sender, key string) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if _, err := s.w.ExecContext(ctx, "DELETE FROM idempotency WHERE sender = ? AND key = ? AND published = 0", sender, key); err != nil {
		return s.wrap("release", err)
	}
	return nil
}

// DeleteIdempotencyBefore deletes records of envelopes created before t and
// returns how many it deleted.
func (s *Store) DeleteIdempotencyBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "idempotency retention",
		`DELETE FROM idempotency WHERE (sender, key) IN
			(SELECT sender, key FROM idempotency WHERE created_at < ? LIMIT ?)`, t)
}
