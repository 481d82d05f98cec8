package sqlite

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/go-routing-service/routingservice/internal/datadir"
)

// PathStatus is what CheckPath found.
type PathStatus struct {
	// Exists is whether the database file exists (else Open creates it).
	Exists bool
	// Size of the existing file in bytes.
	Size int64
	// Dir is the directory that holds, or is to hold, the file.
	Dir string
}

// CheckPath reports whether Open could open or create the database at
// path, without creating or changing anything: an existing file must be a
// regular file this process may read and write; otherwise its directory
// must be one this process may create files in. A directory that does not
// exist gives an error that wraps fs.ErrNotExist (Open does not create
// directories).
func CheckPath(path string) (PathStatus, error) {
	if err := checkPathName(path); err != nil {
		return PathStatus{}, fmt.Errorf("sqlite: %w", err)
	}
	st := PathStatus{Dir: filepath.Dir(path)}
	fi, err := os.Stat(path)
	switch {
	case err == nil:
		if !fi.Mode().IsRegular() {
			return st, fmt.Errorf("sqlite: %s is not a regular file (%v)", path, fi.Mode().Type())
		}
		if err := datadir.ReadWritable(path); err != nil {
			return st, fmt.Errorf("sqlite: %s: %w", path, err)
		}
		st.Exists, st.Size = true, fi.Size()
		return st, nil
	case !errors.Is(err, fs.ErrNotExist):
		return st, fmt.Errorf("sqlite: %w", err)
	}
	if err := datadir.Writable(st.Dir); err != nil {
		return st, fmt.Errorf("sqlite: %w", err)
	}
	return st, nil
}
