package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// ErrInUse is returned by Listen when another live process answers on the
// socket.
var ErrInUse = errors.New("admin socket in use by a running instance")

// Listen binds the admin socket at path with file mode 0600. A socket file
// left behind by a process that is gone is removed first; when a live
// process answers on it, Listen returns an error wrapping ErrInUse, and it
// never removes a file that is not a socket. Closing the listener removes
// the socket file.
func Listen(ctx context.Context, path string) (net.Listener, error) {
	fi, err := os.Lstat(path)
	switch {
	case err == nil:
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket %s: exists and is not a socket", path)
		}
		if live(ctx, path) {
			return nil, fmt.Errorf("admin socket %s: %w", path, ErrInUse)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("admin socket %s: remove stale socket: %w", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	ln, err := listenOwnerOnly(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	// The socket is created 0600 (listenOwnerOnly); this also fixes the
	// mode should a file system ignore the umask.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return ln, nil
}

// umaskMu serializes the umask changes of listenOwnerOnly.
var umaskMu sync.Mutex

// listenOwnerOnly binds a Unix socket at path under the umask 0177, so
// that it is created with mode 0600: there is no moment at which another
// user could connect to it. The umask is the process's: files other
// goroutines create meanwhile get at most mode 0600 too, never more.
func listenOwnerOnly(ctx context.Context, path string) (net.Listener, error) {
	umaskMu.Lock()
	defer umaskMu.Unlock()
	old := syscall.Umask(0o177)
	defer syscall.Umask(old)
	var lc net.ListenConfig
	return lc.Listen(ctx, "unix", path)
}

// live reports whether a process accepts connections on the socket at path.
func live(ctx context.Context, path string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
