//go:build unix

package sqlite

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile takes the exclusive lock of the database at path: a flock on
// the file path+"-lock" (created, mode 0600), held until the returned
// file is closed (or the process ends). A lock file rather than the
// database itself, because where flock and SQLite's own fcntl locks
// share one lock table (the BSDs) a flock on the database would stand in
// SQLite's way. It fails with ErrInUse while another Store holds it.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path+"-lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrInUse
		}
		return nil, fmt.Errorf("lock %s-lock: %w", path, err)
	}
	return f, nil
}
