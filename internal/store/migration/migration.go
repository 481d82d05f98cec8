// Package migration loads the numbered SQL migrations a store adapter
// embeds. Applying them (locking, bookkeeping) is the adapter's business,
// because it differs between engines.
package migration

import (
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Migration is one schema step, numbered by the NNNN_ prefix of its file.
type Migration struct {
	// Version is the file name's number, positive and unique.
	Version int
	// Name is the file name, e.g. "0001_init.sql".
	Name string
	// SQL is the file's content.
	SQL string
}

// Load reads every file of directory dir in fsys as a migration named
// NNNN_name.sql and returns them in version order. It fails if a name does
// not start with a positive number and '_', if two files share a version,
// or if there is none.
func Load(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number and '_'", name)
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		out = append(out, Migration{Version: v, Name: name, SQL: string(b)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read migrations: no migration in %s", dir)
	}
	slices.SortFunc(out, func(a, b Migration) int { return a.Version - b.Version })
	for i := 1; i < len(out); i++ {
		if out[i].Version == out[i-1].Version {
			return nil, fmt.Errorf("migrations %s and %s share version %d", out[i-1].Name, out[i].Name, out[i].Version)
		}
	}
	return out, nil
}
