//go:build !unix

package datadir

const (
	accessRead = 1 << iota
	accessWrite
	accessExec
)

// access cannot be asked of the system here: the open itself will tell.
func access(string, uint32) error { return nil }
