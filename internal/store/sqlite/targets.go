package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/go-routing-service/routingservice/internal/store"
)

// PutTarget adds t to user's targets or, when user has a target with t's
// platform and token, replaces its keys. A new target beyond max (max > 0)
// fails with store.ErrTooManyTargets.
func (s *Store) PutTarget(ctx context.Context, user string, t store.Target, max int) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap("put target: begin", err)
	}
	defer tx.Rollback()
	if err := store.PutTargetIn(ctx, targetWrites{tx}, user, t, max); err != nil {
		if errors.Is(err, store.ErrTooManyTargets) {
			return err
		}
		return s.wrap("put target", err)
	}
	if err := tx.Commit(); err != nil {
		return s.wrap("put target: commit", err)
	}
	return nil
}

// targetWrites are PutTarget's statements in its transaction.
type targetWrites struct{ tx *sql.Tx }

func (w targetWrites) UpdateTarget(ctx context.Context, user string, t store.Target) (bool, error) {
	res, err := w.tx.ExecContext(ctx, "UPDATE targets SET p256dh = ?, auth = ? WHERE owner = ? AND platform = ? AND token = ?",
		t.P256DH, t.Auth, user, t.Platform, t.Token)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

func (w targetWrites) CountTargets(ctx context.Context, user string) (int, error) {
	var count int
	if err := w.tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM targets WHERE owner = ?", user).Scan(&count); err != nil {
		return 0, fmt.Errorf("count: %w", err)
	}
	return count, nil
}

func (w targetWrites) InsertTarget(ctx context.Context, user string, t store.Target) error {
	_, err := w.tx.ExecContext(ctx, "INSERT INTO targets (owner, platform, token, p256dh, auth) VALUES (?, ?, ?, ?, ?)",
		user, t.Platform, t.Token, t.P256DH, t.Auth)
	return err
}

// DeleteTarget removes user's target with t's platform and token, if any.
func (s *Store) DeleteTarget(ctx context.Context, user string, t store.Target) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if _, err := s.w.ExecContext(ctx, "DELETE FROM targets WHERE owner = ? AND platform = ? AND token = ?",
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
	rows, err := s.r.QueryContext(ctx, "SELECT platform, token, p256dh, auth FROM targets WHERE owner = ? ORDER BY seq", user)
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
