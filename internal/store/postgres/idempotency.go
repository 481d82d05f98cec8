package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/store"
)

// reserveAttempts bounds how often ReserveIdempotency retries when the
// record it conflicted with was released before it could read it.
const reserveAttempts = 5

// ReserveIdempotency records rec unless (rec.Sender, rec.Key) has a record;
// then it returns that record and false. The primary key on (sender, key)
// decides races: of concurrent calls for one key exactly one records. A
// record holds no payload and no recipient (migration 0008); one written
// before keeps its envelope, from which the request hash is computed.
func (s *Store) ReserveIdempotency(ctx context.Context, rec store.Idempotency) (store.Idempotency, bool, error) {
	if s.closed.Load() {
		return store.Idempotency{}, false, store.ErrClosed
	}
	if rec.ID == "" || len(rec.RequestHash) == 0 {
		return store.Idempotency{}, false, fmt.Errorf("postgres reserve %s: record has no id or no request hash", rec.Key)
	}
	for range reserveAttempts {
		tag, err := s.pool.Exec(ctx, `INSERT INTO idempotency
			(sender, key, id, created_at, published, request_hash)
			VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sender, key) DO NOTHING`,
			rec.Sender, rec.Key, rec.ID, storedTime(rec.CreatedAt), rec.Published, rec.RequestHash)
		if err != nil {
			return store.Idempotency{}, false, s.wrap("reserve", err)
		}
		if tag.RowsAffected() == 1 {
			return rec, true, nil
		}
		got := store.Idempotency{Sender: rec.Sender, Key: rec.Key}
		var (
			recipient *string
			typ       string
			ephemeral bool
			payload   []byte
		)
		err = s.pool.QueryRow(ctx, `SELECT id, created_at, published, request_hash, recipient, type, ephemeral,
			CASE WHEN request_hash IS NULL THEN payload END
			FROM idempotency WHERE sender = $1 AND key = $2`, rec.Sender, rec.Key).
			Scan(&got.ID, &got.CreatedAt, &got.Published, &got.RequestHash, &recipient, &typ, &ephemeral, &payload)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // released in between: try to record again
		}
		if err != nil {
			return store.Idempotency{}, false, s.wrap("reserve: read existing", err)
		}
		got.CreatedAt = got.CreatedAt.UTC()
		if len(got.RequestHash) == 0 {
			// Written before migration 0008, with the envelope.
			var r string
			if recipient != nil {
				r = *recipient
			}
			got.RequestHash = store.RequestHash(r, typ, ephemeral, payload)
		}
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

// DeleteIdempotencyBefore deletes records of messages created before t and
// returns how many it deleted.
func (s *Store) DeleteIdempotencyBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "idempotency retention",
		`DELETE FROM idempotency WHERE (sender, key) IN
			(SELECT sender, key FROM idempotency WHERE created_at < $1 LIMIT $2)`, t)
}
