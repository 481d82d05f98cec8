// Package memory is the in-process presence registry: the embedded default,
// for a deployment where one process holds every connection.
//
// Instances is a map lookup under a read lock that allocates only its result.
// Expired entries are hidden at once and removed by a sweeper that runs once
// per TTL, owned and stopped by Close.
package memory

import (
	"context"
	"sync"
	"time"

	"github.com/go-routing-service/routingservice/internal/presence"
)

// Option configures a Presence.
type Option func(*Presence)

// WithClock makes the registry read the time from now instead of time.Now
// (for tests that advance time by hand). A clock that never advances by
// itself leaves the sweeper idle; expiry is still checked on every read.
func WithClock(now func() time.Time) Option {
	return func(p *Presence) { p.now = now }
}

// connKey names a connection of one user.
type connKey struct {
	instance string
	id       string
}

// Presence is an in-process presence.Presence. It is safe for concurrent use.
type Presence struct {
	ttl  time.Duration
	now  func() time.Time
	base time.Time // expiries are durations since base (monotonic with time.Now)

	mu     sync.RWMutex
	users  map[string]map[connKey]time.Duration // user -> conn -> expiry
	closed bool

	stop chan struct{}
	done chan struct{}
}

var _ presence.Presence = (*Presence)(nil)

// New returns a registry whose entries expire ttl after their last Add or
// Refresh. It starts a sweeper goroutine that Close stops. ttl must be
// positive.
func New(ttl time.Duration, opts ...Option) *Presence {
	if ttl <= 0 {
		panic("presence/memory: ttl must be positive")
	}
	p := &Presence{
		ttl:   ttl,
		now:   time.Now,
		users: make(map[string]map[connKey]time.Duration),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	for _, o := range opts {
		o(p)
	}
	p.base = p.now()
	go p.sweepLoop()
	return p
}

func (p *Presence) clock() time.Duration { return p.now().Sub(p.base) }

// Add registers c until the TTL passes without a Refresh. Adding a
// connection that is already registered extends its TTL.
func (p *Presence) Add(_ context.Context, c presence.Conn) error {
	exp := p.clock() + p.ttl
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return presence.ErrClosed
	}
	p.putLocked(c, exp)
	return nil
}

func (p *Presence) putLocked(c presence.Conn, exp time.Duration) {
	conns := p.users[c.User]
	if conns == nil {
		conns = make(map[connKey]time.Duration, 1)
		p.users[c.User] = conns
	}
	conns[connKey{c.Instance, c.ID}] = exp
}

// Remove unregisters c. Removing an unknown connection is not an error.
func (p *Presence) Remove(_ context.Context, c presence.Conn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return presence.ErrClosed
	}
	conns := p.users[c.User]
	if conns == nil {
		return nil
	}
	delete(conns, connKey{c.Instance, c.ID})
	if len(conns) == 0 {
		delete(p.users, c.User)
	}
	return nil
}

// Refresh extends the TTL of conns. A connection that is not registered (it
// expired, or was never added) is registered again, so a heartbeat heals the
// registry after a stall longer than the TTL.
func (p *Presence) Refresh(_ context.Context, conns []presence.Conn) error {
	exp := p.clock() + p.ttl
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return presence.ErrClosed
	}
	for _, c := range conns {
		p.putLocked(c, exp)
	}
	return nil
}

// Instances returns the distinct instances that hold an unexpired connection
// of user. It allocates nothing but the returned slice, and nothing at all
// when the user has no connection.
func (p *Presence) Instances(_ context.Context, user string) ([]string, error) {
	now := p.clock()
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return nil, presence.ErrClosed
	}
	conns := p.users[user]
	if len(conns) == 0 {
		return nil, nil
	}
	var out []string
	for k, exp := range conns {
		if exp <= now {
			continue
		}
		dup := false
		for _, inst := range out {
			if inst == k.instance {
				dup = true
				break
			}
		}
		if !dup {
			if out == nil {
				out = make([]string, 0, min(len(conns), 4))
			}
			out = append(out, k.instance)
		}
	}
	return out, nil
}

// InstancesOf returns Instances of each of users.
func (p *Presence) InstancesOf(ctx context.Context, users []string) ([][]string, error) {
	out := make([][]string, len(users))
	for i, u := range users {
		var err error
		if out[i], err = p.Instances(ctx, u); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Ping reports ErrClosed after Close and nil before.
func (p *Presence) Ping(context.Context) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return presence.ErrClosed
	}
	return nil
}

// Close stops the sweeper and drops every entry. Later calls return
// presence.ErrClosed; Close itself may be called more than once.
func (p *Presence) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.users = nil
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	return nil
}

// Len returns the number of registered users, expired or not (until the next
// sweep). It is meant for metrics and tests.
func (p *Presence) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.users)
}

// Sweep removes expired entries now. The sweeper calls it once per TTL.
func (p *Presence) Sweep() {
	now := p.clock()
	p.mu.Lock()
	defer p.mu.Unlock()
	for user, conns := range p.users {
		for k, exp := range conns {
			if exp <= now {
				delete(conns, k)
			}
		}
		if len(conns) == 0 {
			delete(p.users, user)
		}
	}
}

func (p *Presence) sweepLoop() {
	defer close(p.done)
	t := time.NewTicker(p.ttl)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.Sweep()
		}
	}
}
