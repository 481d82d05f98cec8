// Package datadir keeps the data dir: the directory of an instance's own
// files (the local JWT secret, the VAPID key pair, the SQLite database,
// the embedded bus's storage, the admin socket). Prepare makes it private;
// Lock takes it for one instance before anything in it is opened;
// Writable and Creatable tell, changing nothing, whether a file can be
// made in a directory, for `config check`.
package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// Prepare makes dir (mode 0700) where it is missing. An existing one that
// group or others may enter, read or write is tightened to owner-only and
// log warns; one that cannot be tightened (owned by another user, a
// read-only mount) is refused. Its errors say what to do; the caller names
// the key.
func Prepare(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	perm := st.Mode().Perm()
	if perm&0o077 == 0 {
		return nil
	}
	tight := perm &^ 0o077
	if err := os.Chmod(dir, tight); err != nil {
		return fmt.Errorf("%s has mode %v (group or others may use it) and cannot be tightened to %v; "+
			"chmod 700 it as its owner, or name a directory of the service's own: %w", dir, perm, tight, err)
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s keeps mode %v after chmod %v (a file system without Unix permissions?)", dir, st.Mode().Perm(), tight)
	}
	log.Warn("the data dir was open to group or others: tightened to owner only", "dir", dir, "was", perm.String(), "now", tight.String())
	return nil
}

// Writable reports whether dir is a directory this process may create
// files in (an error wrapping fs.ErrNotExist when it does not exist). It
// creates nothing.
func Writable(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := access(dir, accessWrite|accessExec); err != nil {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	return nil
}

// ReadWritable reports whether this process may read and write the file
// at path (the system also refuses writes on a read-only file system).
func ReadWritable(path string) error {
	return access(path, accessRead|accessWrite)
}

// Creatable says how dir comes to be writable: it exists and is, or it is
// the data dir dataDir, which the service creates with its parents at
// start, and its nearest existing parent is. It creates nothing.
func Creatable(dir, dataDir string) (string, error) {
	err := Writable(dir)
	if err == nil {
		return "directory " + dir + " writable", nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if filepath.Clean(dir) != filepath.Clean(dataDir) {
		return "", fmt.Errorf("directory %s does not exist, and serve creates only the data dir (%s)", dir, dataDir)
	}
	for parent := filepath.Dir(filepath.Clean(dir)); ; parent = filepath.Dir(parent) {
		err := Writable(parent)
		if err == nil {
			return fmt.Sprintf("%s is created in %s, writable", dir, parent), nil
		}
		if !errors.Is(err, fs.ErrNotExist) || parent == filepath.Dir(parent) {
			return "", fmt.Errorf("cannot create %s: %w", dir, err)
		}
	}
}
