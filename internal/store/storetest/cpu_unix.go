//go:build unix

package storetest

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user and system) this process used so
// far, and whether it could be read.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
