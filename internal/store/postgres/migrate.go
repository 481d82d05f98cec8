package postgres

import (
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"log/slog"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/store/migration"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrations returns the embedded migrations in version order.
func migrations() ([]migration.Migration, error) {
	return migration.Load(migrationFiles, "migrations")
}

// migrationLockKey is the advisory lock that serialises migrations of one
// schema across every process using the database.
func migrationLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("routingservice store migrate\x00"))
	h.Write([]byte(schema))
	return int64(h.Sum64())
}

// migrate creates schema if needed and applies the migrations it lacks,
// each in its own transaction, holding a session advisory lock on a
// connection of its own: instances starting at once wait for each other and
// each step is applied exactly once. Closing the connection releases the lock
// even if unlocking fails.
func migrate(ctx context.Context, cfg *pgx.ConnConfig, schema string, log *slog.Logger) error {
	return migrateTo(ctx, cfg, schema, log, 0)
}

// migrateTo is migrate up to version last only (every version when last
// is 0): tests make the schemas of earlier versions with it.
func migrateTo(ctx context.Context, cfg *pgx.ConnConfig, schema string, log *slog.Logger, last int) error {
	all, err := migrations()
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	key := migrationLockKey(schema)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key)

	ident := pgx.Identifier{schema}.Sanitize()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+ident); err != nil {
		return fmt.Errorf("migrate: create schema: %w", err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+ident+`.schema_version (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return fmt.Errorf("migrate: create schema_version: %w", err)
	}
	var current int
	if err := conn.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM "+ident+".schema_version").Scan(&current); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if latest := all[len(all)-1].Version; current > latest {
		return fmt.Errorf("migrate: %w", newerSchema(schema, current, latest))
	}
	for _, m := range all {
		if m.Version <= current || (last > 0 && m.Version > last) {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// The connection's search_path names the schema, so migrations
			// use unqualified names.
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+ident+".schema_version (version, name) VALUES ($1, $2)", m.Version, m.Name)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate: apply %s: %w", m.Name, err)
		}
		log.Info("store migration applied", "version", m.Version, "name", m.Name)
	}
	return nil
}

// newerSchema is the error of a schema migrated by a later version of this
// program.
func newerSchema(schema string, current, latest int) error {
	return fmt.Errorf("schema %s is at version %d, newer than this program's %d", schema, current, latest)
}
