package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
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

// listenOwnerOnly binds a Unix socket at path that only its owner can
// reach from the first moment: it is bound inside a fresh directory of mode
// 0700, set to mode 0600 there, then renamed into place. The process's
// umask is left alone (it is shared by every goroutine creating files).
// Closing the listener removes the socket file at path.
func listenOwnerOnly(ctx context.Context, path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".admin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", tmp)
	if err != nil {
		return nil, err
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ul.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ul.Close()
		return nil, err
	}
	return &ownedListener{UnixListener: ul, path: path}, nil
}

// ownedListener removes its socket file when closed.
type ownedListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (l *ownedListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { _ = os.Remove(l.path) })
	return err
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
