//go:build !linux

package realtime

import (
	"errors"
	"syscall"
)

// poller is Linux only: elsewhere each connection is read by a goroutine.
type poller struct{}

type watch struct{}

func newPoller() (*poller, error) { return nil, errors.New("no epoll on this system") }

func (p *poller) watch(syscall.Conn, func(*watch)) (*watch, error) {
	return nil, errors.New("no epoll on this system")
}

func (w *watch) rearm() error { return errors.New("no epoll on this system") }
func (w *watch) stop()        {}
func (p *poller) close()      {}

func (p *poller) idleReaders() int { return 0 }
