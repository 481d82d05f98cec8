package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/go-routing-service/routingservice/internal/store"
)

// targetTable is the Store's store.TargetTable: writes on the write
// connection (w), reads on the read pool (r).
type targetTable struct{ w, r *sql.DB }

// Put runs put in a transaction on the single write connection.
func (tt targetTable) Put(ctx context.Context, user string, put func(store.TargetWrites) error) error {
	tx, err := tt.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	if err := put(targetWrites{tx}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (tt targetTable) Delete(ctx context.Context, user string, t store.Target) error {
	_, err := tt.w.ExecContext(ctx, "DELETE FROM targets WHERE owner = ? AND platform = ? AND token = ?",
		user, t.Platform, t.Token)
	return err
}

func (tt targetTable) List(ctx context.Context, user string) ([]store.Target, error) {
	rows, err := tt.r.QueryContext(ctx, "SELECT platform, token, p256dh, auth FROM targets WHERE owner = ? ORDER BY seq", user)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return store.ScanTargets(rows)
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
