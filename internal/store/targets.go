package store

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
)

// TargetTable is an adapter's statements on its push targets (see
// TargetStore).
type TargetTable interface {
	// Put runs put in a transaction in which no other put of user's
	// targets runs, and commits it unless put fails.
	Put(ctx context.Context, user string, put func(TargetWrites) error) error
	// Delete removes user's target with t's platform and token, if any.
	Delete(ctx context.Context, user string, t Target) error
	// List returns user's targets in the order they were first added.
	List(ctx context.Context, user string) ([]Target, error)
}

// TargetStore is Targets on an adapter's TargetTable, for a Store to
// embed (see NewTargetStore). Its methods are safe for concurrent use.
type TargetStore struct {
	table  TargetTable
	engine string       // prefixes the errors
	closed *atomic.Bool // the Store's closed flag: ErrClosed once set
}

// NewTargetStore returns Targets on table for the Store whose closed flag
// is closed; engine (e.g. "postgres") prefixes their errors.
func NewTargetStore(table TargetTable, engine string, closed *atomic.Bool) TargetStore {
	return TargetStore{table: table, engine: engine, closed: closed}
}

// PutTarget adds t to user's targets or, when user has a target with t's
// platform and token, replaces its keys. A new target beyond max (max > 0)
// fails with ErrTooManyTargets; the table serialises the puts of a user,
// so concurrent puts never pass the cap.
func (ts TargetStore) PutTarget(ctx context.Context, user string, t Target, max int) error {
	if ts.closed.Load() {
		return ErrClosed
	}
	err := ts.table.Put(ctx, user, func(w TargetWrites) error { return PutTargetIn(ctx, w, user, t, max) })
	if err == nil || errors.Is(err, ErrTooManyTargets) {
		return err
	}
	return ts.wrap("put target", err)
}

// DeleteTarget removes user's target with t's platform and token, if any.
func (ts TargetStore) DeleteTarget(ctx context.Context, user string, t Target) error {
	if ts.closed.Load() {
		return ErrClosed
	}
	if err := ts.table.Delete(ctx, user, t); err != nil {
		return ts.wrap("delete target", err)
	}
	return nil
}

// Targets returns user's targets in the order they were first added.
func (ts TargetStore) Targets(ctx context.Context, user string) ([]Target, error) {
	if ts.closed.Load() {
		return nil, ErrClosed
	}
	out, err := ts.table.List(ctx, user)
	if err != nil {
		return nil, ts.wrap("targets", err)
	}
	return out, nil
}

// wrap names the engine and the operation of err, or gives ErrClosed
// once the Store is closed (its close may be why the operation failed).
func (ts TargetStore) wrap(op string, err error) error {
	if ts.closed.Load() {
		err = ErrClosed
	}
	return fmt.Errorf("%s %s: %w", ts.engine, op, err)
}

// TargetWrites are the statements of one PutTarget, in an adapter's
// transaction in which no other put of the user's targets runs (see
// TargetTable.Put and PutTargetIn).
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
