package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LockFile is the file in the data dir whose lock an instance holds while
// it runs; it holds the process id of the holder.
const LockFile = "routingservice.lock"

// ErrInUse is returned by Lock when another instance, in this process or
// another, holds the data dir.
var ErrInUse = errors.New("the data dir is in use by another running instance")

// Lock takes the data dir dir for this instance, before anything in it is
// opened (the SQLite store, the embedded bus's directory, the admin
// socket): an exclusive lock on dir/routingservice.lock, which also gets
// this process's id. Release gives it up; the system gives it up too when
// the process ends, however it ends, so a crashed instance never leaves
// its data dir locked. A second instance on the same dir gets an error
// wrapping ErrInUse that names the dir and, when known, the holder's
// process id.
func Lock(dir string) (release func() error, err error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	held, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if !held {
		b, _ := os.ReadFile(path)
		f.Close()
		holder := ""
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			holder = fmt.Sprintf(" (process %d holds %s)", pid, path)
		}
		return nil, fmt.Errorf("%w: %s%s; stop that instance first, or give this one a data dir of its own (data_dir, ROUTING_DATA_DIR)", ErrInUse, dir, holder)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f.Close, nil
}
