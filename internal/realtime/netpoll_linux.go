//go:build linux

package realtime

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller watches idle connections for readability with one epoll instance,
// so that an idle connection costs no goroutine and no read buffer: when a
// connection has data (or is closed by its peer), the poller hands it to
// a goroutine that reads what arrived and re-arms the watch: an idle one
// of a few kept for that (whose stacks have grown already), or a new one
// when none is idle.
//
// Each watch is one-shot (EPOLLONESHOT): after an event the connection is
// not watched until rearm, so one connection never has two readers. A
// watch ends when its connection is closed (the kernel drops a closed
// descriptor from the epoll set); events that arrive for a descriptor
// number since reused by another connection are told apart by a
// registration number carried in the event.
type poller struct {
	epfd int
	wake int // eventfd that interrupts epoll_wait on close

	mu      sync.Mutex
	watches map[int32]*watch // by descriptor
	seq     uint32
	closed  bool
	done    chan struct{}

	jobs chan *watch  // to an idle reader; unbuffered
	idle atomic.Int32 // readers waiting on jobs
}

// maxIdleReaders bounds the reading goroutines kept waiting for work (64
// per core, at most 256). A reader that finds that many waiting ends; a
// new one must grow its stack again, which cost busy servers more than the
// rest of reading an ack.
var maxIdleReaders = int32(min(64*runtime.GOMAXPROCS(0), 256))

// idleReaders is how many reading goroutines wait for work.
func (p *poller) idleReaders() int {
	if p == nil {
		return 0
	}
	return int(p.idle.Load())
}

// watch is one connection's registration.
type watch struct {
	p     *poller
	raw   syscall.RawConn
	fd    int32
	seq   uint32
	ready func(*watch)
}

const watchEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, err
	}
	p := &poller{epfd: epfd, wake: wake, watches: map[int32]*watch{}, done: make(chan struct{}), jobs: make(chan *watch)}
	go p.run()
	return p, nil
}

// watch calls ready with the watch, on a reading goroutine, when c has data to read or
// its peer closed it; then c is not watched until the watch is rearmed.
// It fails if c is not a pollable connection (the caller then reads with
// a goroutine).
func (p *poller) watch(c syscall.Conn, ready func(*watch)) (*watch, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	w := &watch{p: p, raw: raw, ready: ready}
	var opErr error
	err = raw.Control(func(fd uintptr) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.closed {
			opErr = errPollerClosed
			return
		}
		p.seq++
		w.fd, w.seq = int32(fd), p.seq
		ev := unix.EpollEvent{Events: watchEvents, Fd: w.fd, Pad: int32(w.seq)}
		if opErr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); opErr == nil {
			p.watches[w.fd] = w
		}
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return nil, err
	}
	return w, nil
}

var errPollerClosed = errors.New("poller closed")

// rearm watches the connection again. It fails once the connection is
// closed (the descriptor is held open during the call, so it cannot be
// another connection's).
func (w *watch) rearm() error {
	var opErr error
	err := w.raw.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: watchEvents, Fd: w.fd, Pad: int32(w.seq)}
		opErr = unix.EpollCtl(w.p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
	})
	if err != nil {
		return err
	}
	return opErr
}

// stop forgets the watch; the caller closes the connection after it.
func (w *watch) stop() {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.p.watches[w.fd] == w {
		delete(w.p.watches, w.fd)
	}
}

func (p *poller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		for i := range events[:n] {
			ev := &events[i]
			if int(ev.Fd) == p.wake {
				continue
			}
			w := p.watches[ev.Fd]
			if w == nil || w.seq != uint32(ev.Pad) {
				continue // a connection since closed
			}
			p.dispatch(w)
		}
		p.mu.Unlock()
	}
}

// dispatch hands w to an idle reader, or to a new one.
func (p *poller) dispatch(w *watch) {
	select {
	case p.jobs <- w:
	default:
		go p.reader(w)
	}
}

// reader runs w's ready, then waits for more work while no more than
// maxIdleReaders others wait, until the poller closes.
func (p *poller) reader(w *watch) {
	for {
		w.ready(w)
		if p.idle.Add(1) > maxIdleReaders {
			p.idle.Add(-1)
			return
		}
		select {
		case w = <-p.jobs:
			p.idle.Add(-1)
		case <-p.done:
			p.idle.Add(-1)
			return
		}
	}
}

// close stops the poller; watches still registered get no more events.
func (p *poller) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(p.wake, one[:])
	<-p.done
	unix.Close(p.epfd)
	unix.Close(p.wake)
}
