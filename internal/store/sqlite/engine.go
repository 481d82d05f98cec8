package sqlite

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/go-routing-service/routingservice/internal/datadir"
	"github.com/go-routing-service/routingservice/internal/store"
)

// Settings are the store's SQLite key in config.yaml (store.sqlite_path).
type Settings struct {
	// Path of the database file; empty: routing.db in the data dir
	// (DefaultPath).
	Path string `yaml:"sqlite_path"`
}

// DefaultPath is the database file in the data dir dataDir.
func DefaultPath(dataDir string) string { return filepath.Join(dataDir, "routing.db") }

// Engine is the store on an SQLite file (store.type sqlite): one instance
// only.
type Engine struct {
	Settings Settings
}

var _ store.Engine = Engine{}

// Shared: a file serves the processes of one machine.
func (Engine) Shared() bool { return false }

// Check requires a path.
func (e Engine) Check(_ store.Config, _, _ bool, bad func(key, msg string)) {
	if e.Settings.Path == "" {
		bad("sqlite_path", "must not be empty when store.type is sqlite")
	}
}

// Preflight: the database file is checked by Inspect and opened by Open.
func (Engine) Preflight(func(key string, err error)) {}

// Open opens (or creates) the database and migrates it.
func (e Engine) Open(ctx context.Context, c store.Config, env store.Env) (store.Store, error) {
	path := e.Settings.Path
	s, err := Open(ctx, path, Options{MaxBatch: c.MaxBatch, Logger: env.Logger.With("store", "sqlite")})
	if err != nil {
		return nil, fmt.Errorf("store (sqlite %s): %w", path, err)
	}
	env.Logger.Info("store", "type", "sqlite", "path", path)
	return s, nil
}

// Inspect says whether the file exists and can be written, or where it
// will be created.
func (e Engine) Inspect(_ context.Context, _ store.Config, env store.Env) (string, error) {
	path := e.Settings.Path
	st, err := CheckPath(path)
	if err == nil {
		if st.Exists {
			return fmt.Sprintf("sqlite %s (%d bytes), readable and writable", path, st.Size), nil
		}
		return fmt.Sprintf("sqlite %s does not exist yet; serve creates it (directory %s writable)", path, st.Dir), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	how, derr := datadir.Creatable(st.Dir, env.DataDir)
	if derr != nil {
		return "", fmt.Errorf("sqlite %s: %w", path, derr)
	}
	return fmt.Sprintf("sqlite %s does not exist yet; serve creates it (data dir %s)", path, how), nil
}
