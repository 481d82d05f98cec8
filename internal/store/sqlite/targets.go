package sqlite

import (
	"context"

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
	res, err := tx.ExecContext(ctx, "UPDATE targets SET p256dh = ?, auth = ? WHERE owner = ? AND platform = ? AND token = ?",
		t.P256DH, t.Auth, user, t.Platform, t.Token)
	if err != nil {
		return s.wrap("put target", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return s.wrap("put target", err)
	}
	if n == 0 {
		if max > 0 {
			var count int
			if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM targets WHERE owner = ?", user).Scan(&count); err != nil {
				return s.wrap("put target: count", err)
			}
			if count >= max {
				return store.ErrTooManyTargets
			}
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO targets (owner, platform, token, p256dh, auth) VALUES (?, ?, ?, ?, ?)",
			user, t.Platform, t.Token, t.P256DH, t.Auth); err != nil {
			return s.wrap("put target", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.wrap("put target: commit", err)
	}
	return nil
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
	var out []store.Target
	for rows.Next() {
		var t store.Target
		if err := rows.Scan(&t.Platform, &t.Token, &t.P256DH, &t.Auth); err != nil {
			return nil, s.wrap("targets: scan", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("targets", err)
	}
	return out, nil
}
