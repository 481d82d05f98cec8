package store

import (
	"context"
	"fmt"
)

// TargetWrites are the statements of one PutTarget, in an adapter's
// transaction in which no other put of the user's targets runs (see
// PutTargetIn).
type TargetWrites interface {
	// UpdateTarget replaces the keys of user's target with t's platform
	// and token and reports whether there is one.
	UpdateTarget(ctx context.Context, user string, t Target) (bool, error)
	// CountTargets returns user's number of targets.
	CountTargets(ctx context.Context, user string) (int, error)
	// InsertTarget adds t to user's targets.
	InsertTarget(ctx context.Context, user string, t Target) error
}

// PutTargetIn is Targets.PutTarget on an adapter's statements: it
// replaces the keys of user's target with t's platform and token or, when
// there is none, adds t unless user has max targets already (max > 0), in
// which case it returns ErrTooManyTargets. The adapter serialises the puts
// of a user, so that concurrent puts never pass the cap.
func PutTargetIn(ctx context.Context, w TargetWrites, user string, t Target, max int) error {
	if updated, err := w.UpdateTarget(ctx, user, t); err != nil || updated {
		return err
	}
	if max > 0 {
		n, err := w.CountTargets(ctx, user)
		if err != nil {
			return err
		}
		if n >= max {
			return ErrTooManyTargets
		}
	}
	return w.InsertTarget(ctx, user, t)
}

// TargetRows are the rows of a query of targets, each (platform, token,
// p256dh, auth): what the adapters' drivers return.
type TargetRows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// ScanTargets reads the targets of rows, in order (a scan's error says
// "scan"). The caller closes rows.
func ScanTargets(rows TargetRows) ([]Target, error) {
	var out []Target
	for rows.Next() {
		var t Target
		if err := rows.Scan(&t.Platform, &t.Token, &t.P256DH, &t.Auth); err != nil {
			return nil, fmt.Errorf("scan: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
