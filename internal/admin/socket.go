package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
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
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	// The data dir is 0700 already; this closes the socket to other users
	// wherever it lives.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return ln, nil
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
