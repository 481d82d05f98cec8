package postgres

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-routing-service/routingservice/internal/ident"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Settings are the store's PostgreSQL keys in config.yaml
// (store.postgres_*; DATABASE_URL comes from the environment).
type Settings struct {
	// Schema holds the tables (created if missing).
	Schema string `yaml:"postgres_schema"`
	// VacuumInterval is how often the store checks its high-churn tables
	// and vacuums those holding VacuumDeadRows dead rows or more (0:
	// never; autovacuum alone). One instance vacuums at a time; a table
	// autovacuum is working on is skipped.
	VacuumInterval time.Duration `yaml:"postgres_vacuum_interval"`
	VacuumDeadRows int64         `yaml:"postgres_vacuum_dead_rows"`
}

// DefaultSettings are the keys' defaults.
func DefaultSettings() Settings {
	return Settings{Schema: "public", VacuumInterval: 5 * time.Second, VacuumDeadRows: DefaultVacuumDeadRows}
}

// Check reports each problem of the keys whatever the engine, keys
// relative to store.
func (s Settings) Check(bad func(key, msg string)) {
	if !ident.Valid(s.Schema) {
		bad("postgres_schema", fmt.Sprintf("must be %s, got %q", ident.Rule, s.Schema))
	}
	if s.VacuumInterval < 0 {
		bad("postgres_vacuum_interval", "must not be negative (0: the store never vacuums; autovacuum alone)")
	}
	if s.VacuumDeadRows < 1 {
		bad("postgres_vacuum_dead_rows", "must be at least 1")
	}
}

// Engine is the store on PostgreSQL (store.type postgres), shared by every
// instance.
type Engine struct {
	Settings Settings
	// URL is DATABASE_URL.
	URL string
}

var _ store.Engine = Engine{}

// Shared: every instance of a deployment uses the same database.
func (Engine) Shared() bool { return true }

// Check requires DATABASE_URL and, with links, an sslmode that encrypts.
func (e Engine) Check(_ store.Config, prod, links bool, bad func(key, msg string)) {
	switch {
	case e.URL == "" && prod:
		bad("type", "postgres needs the DATABASE_URL environment variable (in production with sslmode=require, verify-ca or verify-full)")
	case e.URL == "":
		bad("type", "postgres needs the DATABASE_URL environment variable")
	case links:
		switch m := sslMode(e.URL); m {
		case "require", "verify-ca", "verify-full":
		default:
			bad("DATABASE_URL", fmt.Sprintf("the environment variable must set sslmode=require, verify-ca or verify-full in production, got %q", m))
		}
	}
}

// sslMode returns the sslmode of a PostgreSQL URL or key=value string.
func sslMode(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return ""
		}
		return u.Query().Get("sslmode")
	}
	for _, f := range strings.Fields(dsn) {
		if k, v, ok := strings.Cut(f, "="); ok && k == "sslmode" {
			return strings.Trim(v, "'")
		}
	}
	return ""
}

// Preflight: the engine's keys name no file.
func (Engine) Preflight(func(key string, err error)) {}

// Options are the store's options for c.
func (e Engine) Options(c store.Config, env store.Env) Options {
	return Options{
		MaxBatch: c.MaxBatch,
		MaxConns: int32(c.MaxConns),
		Schema:   e.Settings.Schema,
		Logger:   env.Logger.With("store", "postgres"),
		Vacuum:   VacuumOptions{Interval: e.Settings.VacuumInterval, DeadRows: e.Settings.VacuumDeadRows},
	}
}

// Open connects, applies the migrations and, with env.Metrics, exports
// the statistics of the store's tables.
func (e Engine) Open(ctx context.Context, c store.Config, env store.Env) (store.Store, error) {
	s, err := Open(ctx, e.URL, e.Options(c, env))
	if err != nil {
		return nil, fmt.Errorf("store (postgres, DATABASE_URL): %w", err)
	}
	if env.Metrics != nil {
		env.Metrics.RegisterStoreTables(func() []telemetry.TableStat {
			var out []telemetry.TableStat
			for _, t := range s.TableStats() {
				out = append(out, telemetry.TableStat(t))
			}
			return out
		})
	}
	return s, nil
}

// Inspect says which server answered, and where the schema stands against
// this program's migrations.
func (e Engine) Inspect(ctx context.Context, c store.Config, env store.Env) (string, error) {
	st, err := Inspect(ctx, e.URL, e.Options(c, env))
	if err != nil {
		return "", fmt.Errorf("postgres (DATABASE_URL): %w", err)
	}
	d := fmt.Sprintf("postgres %s, schema %s ", st.ServerVersion, st.Schema)
	switch {
	case !st.SchemaExists:
		d += fmt.Sprintf("does not exist; serve creates it and applies migrations 1-%d", st.Latest)
	case !st.Migrated:
		d += fmt.Sprintf("has no schema_version table; serve applies migrations 1-%d", st.Latest)
	case st.Version < st.Latest:
		d += fmt.Sprintf("at migration %d of %d; serve applies %d-%d", st.Version, st.Latest, st.Version+1, st.Latest)
	default:
		d += fmt.Sprintf("at migration %d of %d", st.Version, st.Latest)
	}
	if !st.Autovacuum {
		d += "; warning: autovacuum is off, the store's tables grow without bound and writes slow down"
	}
	return d, nil
}
