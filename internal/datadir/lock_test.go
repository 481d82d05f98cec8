package datadir

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// One instance at a time holds a data dir: a second Lock fails with
// ErrInUse naming the dir and the holder's process id, and succeeds once
// the first is released.
func TestLockIsExclusive(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no data dir lock on this system")
	}
	dir := t.TempDir()
	release, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, LockFile))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q (%v), want this process's id", b, err)
	}
	_, err = Lock(dir)
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second Lock: %v, want ErrInUse", err)
	}
	for _, want := range []string{dir, "process " + strconv.Itoa(os.Getpid()), "data_dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("second Lock's error %q does not name %q", err, want)
		}
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	again, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
	if err := again(); err != nil {
		t.Fatal(err)
	}
}

// A dir that cannot hold the lock file fails with the path, not ErrInUse.
func TestLockMissingDir(t *testing.T) {
	_, err := Lock(filepath.Join(t.TempDir(), "missing"))
	if err == nil || errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), LockFile) {
		t.Fatalf("Lock on a missing dir: %v", err)
	}
}
