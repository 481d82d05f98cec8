package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-routing-service/routingservice/internal/store/migration"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrations returns the embedded migrations in version order.
func migrations() ([]migration.Migration, error) {
	return migration.Load(migrationFiles, "migrations")
}

// migrate applies the migrations the database lacks, all in one immediate
// transaction, so that processes opening the same file at once apply each
// step exactly once.
func migrate(ctx context.Context, db *sql.DB, log *slog.Logger) error {
	return migrateTo(ctx, db, log, 0)
}

// migrateTo is migrate up to version last only (every version when last
// is 0): tests make the databases of earlier versions with it.
func migrateTo(ctx context.Context, db *sql.DB, log *slog.Logger, last int) error {
	all, err := migrations()
	if err != nil {
		return err
	}
	return migrateWith(ctx, db, log, all, last)
}

// migrateWith is migrateTo with the migrations all, the program's (tests
// play a program of an earlier version with the first of them). It
// refuses a database whose schema is newer than the last of all.
func migrateWith(ctx context.Context, db *sql.DB, log *slog.Logger, all []migration.Migration, last int) error {
	tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: takes the write lock now
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback()

	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("migrate: create schema_version: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_version").Scan(&current); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if latest := all[len(all)-1].Version; current > latest {
		return fmt.Errorf("migrate: database schema version %d is newer than this program's %d", current, latest)
	}
	for _, m := range all {
		if m.Version <= current || (last > 0 && m.Version > last) {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return fmt.Errorf("migrate: apply %s: %w", m.Name, err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
			m.Version, m.Name, time.Now().UnixMilli()); err != nil {
			return fmt.Errorf("migrate: record %s: %w", m.Name, err)
		}
		log.Info("store migration applied", "version", m.Version, "name", m.Name)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}
