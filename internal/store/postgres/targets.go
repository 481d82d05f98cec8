package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/go-routing-service/routingservice/internal/store"
)

// targetTable is the Store's store.TargetTable.
type targetTable struct {
	pool   *pgxpool.Pool
	schema string
}

// Put serialises the puts of a user with a transaction-scoped advisory
// lock.
func (tt targetTable) Put(ctx context.Context, user string, put func(store.TargetWrites) error) error {
	return pgx.BeginFunc(ctx, tt.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", tt.schema, user); err != nil {
			return err
		}
		return put(targetWrites{tx})
	})
}

func (tt targetTable) Delete(ctx context.Context, user string, t store.Target) error {
	_, err := tt.pool.Exec(ctx, "DELETE FROM targets WHERE owner = $1 AND platform = $2 AND token = $3",
		user, t.Platform, t.Token)
	return err
}

func (tt targetTable) List(ctx context.Context, user string) ([]store.Target, error) {
	rows, err := tt.pool.Query(ctx, "SELECT platform, token, p256dh, auth FROM targets WHERE owner = $1 ORDER BY seq", user)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return store.ScanTargets(rows)
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
