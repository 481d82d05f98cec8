package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/go-routing-service/routingservice/internal/store"
)

// ReserveIdempotency records rec unless (rec.Sender, rec.Key) has a record;
// then it returns that record and false. Reservations go through the single
// write connection in immediate transactions, so of concurrent calls for one
// key exactly one records. A record holds no payload and no recipient
// (migration 0007); one written before keeps its envelope, from which the
// request hash is computed.
func (s *Store) ReserveIdempotency(ctx context.Context, rec store.Idempotency) (store.Idempotency, bool, error) {
	if s.closed.Load() {
		return store.Idempotency{}, false, store.ErrClosed
	}
	if rec.ID == "" || len(rec.RequestHash) == 0 {
		return store.Idempotency{}, false, fmt.Errorf("sqlite reserve %s: record has no id or no request hash", rec.Key)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Idempotency{}, false, s.wrap("reserve: begin", err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO idempotency
		(sender, key, id, created_at, published, request_hash)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sender, key) DO NOTHING`,
		rec.Sender, rec.Key, rec.ID, toMillis(rec.CreatedAt), rec.Published, rec.RequestHash)
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
	got := store.Idempotency{Sender: rec.Sender, Key: rec.Key}
	var (
		ms        int64
		recipient sql.NullString
		typ       string
		ephemeral bool
		payload   []byte
	)
	err = tx.QueryRowContext(ctx, `SELECT id, created_at, published, request_hash, recipient, type, ephemeral,
		CASE WHEN request_hash IS NULL THEN payload END
		FROM idempotency WHERE sender = ? AND key = ?`, rec.Sender, rec.Key).
		Scan(&got.ID, &ms, &got.Published, &got.RequestHash, &recipient, &typ, &ephemeral, &payload)
	if err != nil {
		return store.Idempotency{}, false, s.wrap("reserve: read existing", err)
	}
	got.CreatedAt = fromMillis(ms)
	if len(got.RequestHash) == 0 {
		// Written before migration 0007, with the envelope.
		got.RequestHash = store.RequestHash(recipient.String, typ, ephemeral, payload)
	}
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

// DeleteIdempotencyBefore deletes records of messages created before t and
// returns how many it deleted.
func (s *Store) DeleteIdempotencyBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "idempotency retention",
		`DELETE FROM idempotency WHERE (sender, key) IN
			(SELECT sender, key FROM idempotency WHERE created_at < ? LIMIT ?)`, t)
}
