package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/store"
)

// PutTarget adds t to user's targets or, when user has a target with t's
// platform and token, replaces its keys. A new target beyond max (max > 0)
// fails with store.ErrTooManyTargets. Puts for one user are serialised by a
// transaction-scoped advisory lock, so concurrent puts never pass the cap.
func (s *Store) PutTarget(ctx context.Context, user string, t store.Target, max int) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", s.schema, user); err != nil {
			return err
		}
		return store.PutTargetIn(ctx, targetWrites{tx}, user, t, max)
	})
	if errors.Is(err, store.ErrTooManyTargets) {
		return err
	}
	if err != nil {
		return s.wrap("put target", err)
	}
	return nil
}

// targetWrites are PutTarget's statements in its transaction.
type targetWrites struct{ tx pgx.Tx }

func (w targetWrites) UpdateTarget(ctx context.Context, user string, t store.Target) (bool, error) {
	tag, err := w.tx.Exec(ctx, "UPDATE targets SET p256dh = $1, auth = $2 WHERE owner = $3 AND platform = $4 AND token = $5",
		t.P256DH, t.Auth, user, t.Platform, t.Token)
	return tag.RowsAffected() > 0, err
}

func (w targetWrites) CountTargets(ctx context.Context, user string) (int, error) {
	var count int
	err := w.tx.QueryRow(ctx, "SELECT COUNT(*) FROM targets WHERE owner = $1", user).Scan(&count)
	return count, err
}

func (w targetWrites) InsertTarget(ctx context.Context, user string, t store.Target) error {
	_, err := w.tx.Exec(ctx, `INSERT INTO targets (owner, platform, token, p256dh, auth) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (owner, platform, token) DO UPDATE SET p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth`,
		user, t.Platform, t.Token, t.P256DH, t.Auth)
	return err
}

// DeleteTarget removes user's target with t's platform and token, if any.
func (s *Store) DeleteTarget(ctx context.Context, user string, t store.Target) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if _, err := s.pool.Exec(ctx, "DELETE FROM targets WHERE owner = $1 AND platform = $2 AND token = $3",
		user, t.Platform, t.Token); err != nil {
		return s.wrap("delete target", err)
	}
	return nil
}

// Targets returns user's targets in the order they were first added.
func (s *Store) Targets(ctx context.Context, user string) ([]store.Target, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	rows, err := s.pool.Query(ctx, "SELECT platform, token, p256dh, auth FROM targets WHERE owner = $1 ORDER BY seq", user)
	if err != nil {
		return nil, s.wrap("targets", err)
	}
	defer rows.Close()
	out, err := store.ScanTargets(rows)
	if err != nil {
		return nil, s.wrap("targets", err)
	}
	return out, nil
}
