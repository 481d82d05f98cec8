//go:build unix

package datadir

import "golang.org/x/sys/unix"

const (
	accessRead  = unix.R_OK
	accessWrite = unix.W_OK
	accessExec  = unix.X_OK
)

// access asks the kernel whether this process may use path so (it also
// refuses writes on a read-only file system).
func access(path string, mode uint32) error {
	return unix.Access(path, mode)
}
