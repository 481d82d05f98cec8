package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// reserveAttempts bounds how often ReserveIdempotency retries when the
// record it conflicted with was released before it could read it.
const reserveAttempts = 5

// ReserveIdempotency records rec unless (rec.Sender, rec.Key) has a record;
// then it returns that record and false. The primary key on (sender, key)
// decides races: of concurrent calls for one key exactly one records.
func (s *Store) ReserveIdempotency(ctx context.Context, rec store.Idempotency) (store.Idempotency, bool, error) {
	if s.closed.Load() {
		return store.Idempotency{}, false, store.ErrClosed
	}
	e := rec.Envelope
	if e == nil {
		return store.Idempotency{}, false, fmt.Errorf("postgres reserve %s: record has no envelope", rec.Key)
	}
	payload := e.Payload
	if payload == nil {
		payload = []byte{}
	}
	for range reserveAttempts {
		tag, err := s.pool.Exec(ctx, `INSERT INTO idempotency
			(sender, key, id, recipient, type, payload, ephemeral, created_at, published)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (sender, key) DO NOTHING`,
			rec.Sender, rec.Key, e.ID, e.Recipient, e.Type, payload, e.Ephemeral, storedTime(e.CreatedAt), rec.Published)
		if err != nil {
			return store.Idempotency{}, false, s.wrap("reserve", err)
		}
		if tag.RowsAffected() == 1 {
			return rec, true, nil
		}
		got := store.Idempotency{Sender: rec.Sender, Key: rec.Key, Envelope: &envelope.Envelope{Sender: rec.Sender}}
		ge := got.Envelope
		err = s.pool.QueryRow(ctx, `SELECT id, recipient, type, payload, ephemeral, created_at, published
			FROM idempotency WHERE sender = $1 AND key = $2`, rec.Sender, rec.Key).
			Scan(&ge.ID, &ge.Recipient, &ge.Type, &ge.Payload, &ge.Ephemeral, &ge.CreatedAt, &got.Published)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // released in between: try to record again
		}
		if err != nil {
			return store.Idempotency{}, false, s.wrap("reserve: read existing", err)
		}
		if ge.Payload == nil {
			ge.Payload = []byte{}
		}
		ge.CreatedAt = ge.CreatedAt.UTC()
		return got, false, nil
	}
	return store.Idempotency{}, false, fmt.Errorf("postgres reserve %s: record kept changing under %d attempts", rec.Key, reserveAttempts)
}

// MarkPublished marks the record of (sender, key) published; an unknown
// record is left unknown.
func (s *Store) MarkPublished(ctx context.Context, sender, key string) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if _, err := s.pool.Exec(ctx, "UPDATE idempotency SET published = true WHERE sender = $1 AND key = $2", sender, key); err != nil {
		return s.wrap("mark published", err)
	}
	return nil
}

// ReleaseIdempotency deletes the record of (sender, key) unless it is published.
func (s *Store) ReleaseIdempotency(ctx context.Context, sender, key string) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if _, err := s.pool.Exec(ctx, "DELETE FROM idempotency WHERE sender = $1 AND key = $2 AND NOT published", sender, key); err != nil {
		return s.wrap("release", err)
	}
	return nil
}

// DeleteIdempotencyBefore deletes records of envelopes created before t and
// returns how many it deleted.
func (s *Store) DeleteIdempotencyBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "idempotency retention",
		`DELETE FROM idempotency WHERE (sender, key) IN
			(SELECT sender, key FROM idempotency WHERE created_at < $1 LIMIT $2)`, t)
}
