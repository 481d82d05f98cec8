package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Status is what Inspect found of a database and the store's schema in it.
type Status struct {
	// ServerVersion is the server's server_version (e.g. "16.4").
	ServerVersion string
	// Autovacuum is the server's autovacuum setting. Without it the
	// store's tables, whose rows are all short-lived, grow without bound
	// and every write slows down.
	Autovacuum bool
	// Schema is the schema Open would use; SchemaExists whether it exists.
	Schema       string
	SchemaExists bool
	// Migrated is whether the schema has its schema_version table, and
	// Version the last migration applied (0 without the table).
	Migrated bool
	Version  int
	// Latest is the last migration this program has; Open applies those
	// between Version and Latest.
	Latest int
}

// Inspect connects with the settings Open would use, pings, and reads the
// server version and the schema's migration state inside a read-only
// transaction: it creates and migrates nothing. A schema that does not
// exist yet or lacks migrations is no error (Open creates and migrates
// it); one newer than this program, which Open refuses, is.
func Inspect(ctx context.Context, url string, opts Options) (Status, error) {
	opts = opts.withDefaults()
	cfg, err := poolConfig(url, opts)
	if err != nil {
		return Status{}, fmt.Errorf("postgres inspect: %w", err)
	}
	all, err := migrations()
	if err != nil {
		return Status{}, err
	}
	st := Status{Schema: opts.Schema, Latest: all[len(all)-1].Version}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return Status{}, fmt.Errorf("postgres inspect: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.Ping(ctx); err != nil {
		return Status{}, fmt.Errorf("postgres inspect: ping: %w", err)
	}
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "SHOW server_version").Scan(&st.ServerVersion); err != nil {
			return fmt.Errorf("server version: %w", err)
		}
		if st.Autovacuum, err = autovacuum(ctx, tx); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", opts.Schema).Scan(&st.SchemaExists); err != nil {
			return fmt.Errorf("schema %s: %w", opts.Schema, err)
		}
		table := pgx.Identifier{opts.Schema, "schema_version"}.Sanitize()
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&st.Migrated); err != nil {
			return fmt.Errorf("schema_version table: %w", err)
		}
		if !st.Migrated {
			return nil
		}
		if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM "+table).Scan(&st.Version); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		return nil
	})
	if err != nil {
		return Status{}, fmt.Errorf("postgres inspect: %w", err)
	}
	if st.Version > st.Latest {
		return st, fmt.Errorf("postgres inspect: %w", newerSchema(opts.Schema, st.Version, st.Latest))
	}
	return st, nil
}

// querier is a connection, pool or transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// autovacuum reads the server's autovacuum setting.
func autovacuum(ctx context.Context, q querier) (bool, error) {
	var v string
	if err := q.QueryRow(ctx, "SHOW autovacuum").Scan(&v); err != nil {
		return false, fmt.Errorf("autovacuum setting: %w", err)
	}
	return v == "on", nil
}
