package admin

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The socket is created with mode 0600 whatever the process's umask: it is
// never, even for a moment before a chmod, open to other users.
func TestSocketCreatedOwnerOnly(t *testing.T) {
	old := syscall.Umask(0) // the widest: a socket made under it is 0777
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := listenOwnerOnly(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Fatalf("socket created with mode %o, want 600", m)
	}
	if now := syscall.Umask(0); now != 0 {
		t.Fatalf("umask changed to %o", now)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file left after Close: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".admin-*")); len(left) != 0 {
		t.Fatalf("private directories left: %v", left)
	}
}
