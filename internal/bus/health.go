package bus

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Health probing. The bus follows whether its engine takes publishes: a
// publish that fails (not because its caller gave up) marks it down, and
// while it is down it pings the engine every probeInterval; a ping that
// succeeds, or a publish to each queue that failed, marks it up again
// and calls the functions registered with OnRecovered. With a registered function it
// also pings the engine every watchInterval while up, so that an outage
// is noticed (and its end announced) on an instance that publishes
// nothing meanwhile.
const (
	probeInterval = 250 * time.Millisecond
	watchInterval = time.Second
	probeTimeout  = time.Second
)

// health is the bus's view of its engine.
type health struct {
	mu       sync.Mutex
	down     bool
	since    time.Time // when it went down
	probing  bool      // the probe loop runs
	next     int
	onUp     map[int]func()
	watching bool
	// upCh is closed (and replaced) when the engine recovers.
	upCh chan struct{}
	// failing are the queues whose last publish failed.
	failing map[string]bool
}

// recovery returns a channel closed when the engine next recovers.
func (b *Bus) recovery() <-chan struct{} {
	h := &b.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.upCh == nil {
		h.upCh = make(chan struct{})
	}
	return h.upCh
}

// sleepUntilRecovered waits d, or less when the engine recovers first; it
// reports false when ctx ends first.
func (b *Bus) sleepUntilRecovered(ctx context.Context, d time.Duration) bool {
	up := b.recovery()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-up:
	}
	return true
}

// OnRecovered registers fn, called (on a goroutine of its own) each time
// the engine takes publishes again after failing them. The returned
// function unregisters it. Registering starts a watch that pings the
// engine every second while it is up, so that an outage with no publishes
// is noticed too.
func (b *Bus) OnRecovered(fn func()) (unregister func()) {
	h := &b.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.onUp == nil {
		h.onUp = map[int]func(){}
	}
	id := h.next
	h.next++
	h.onUp[id] = fn
	if !h.watching && !h.probing {
		h.watching, h.probing = true, true
		go b.probe()
	}
	h.watching = true
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.onUp, id)
	}
}

// Down reports whether the engine failed its last publish or ping, and
// since when.
func (b *Bus) Down() (bool, time.Time) {
	h := &b.health
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.down, h.since
}

// published records the outcome of a publish to queue. The engine is up
// again once every queue whose publish failed has taken one since (or
// the engine answered a ping): a queue whose stream still elects its
// leader keeps it down while the other takes publishes.
func (b *Bus) published(ctx context.Context, queue string, err error) {
	switch {
	case err == nil:
		h := &b.health
		h.mu.Lock()
		delete(h.failing, queue)
		up := len(h.failing) == 0
		h.mu.Unlock()
		if up {
			b.markUp()
		}
	case ctx.Err() != nil && errors.Is(err, ctx.Err()), errors.Is(err, ErrClosed):
		// The caller gave up, or the bus closed: no news of the engine.
	default:
		b.markDown(queue, err)
	}
}

// markDown records that a publish to queue (or, with queue "", a ping)
// failed.
func (b *Bus) markDown(queue string, err error) {
	h := &b.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if queue != "" {
		if h.failing == nil {
			h.failing = map[string]bool{}
		}
		h.failing[queue] = true
	}
	if h.down {
		return
	}
	h.down, h.since = true, time.Now()
	b.log.Warn("the bus does not take publishes; probing it until it does", "err", err)
	if !h.probing {
		h.probing = true
		go b.probe()
	}
}

func (b *Bus) markUp() {
	h := &b.health
	h.mu.Lock()
	if !h.down {
		h.mu.Unlock()
		return
	}
	h.down = false
	clear(h.failing)
	if h.upCh != nil {
		close(h.upCh)
		h.upCh = nil
	}
	fns := make([]func(), 0, len(h.onUp))
	for _, fn := range h.onUp {
		fns = append(fns, fn)
	}
	since := h.since
	h.mu.Unlock()
	b.log.Info("the bus takes publishes again", "down_for", time.Since(since).Round(time.Millisecond))
	for _, fn := range fns {
		go fn()
	}
}

// probe pings the engine until the bus closes: every probeInterval while
// it is down, every watchInterval while up if watched; unwatched and up,
// it ends.
func (b *Bus) probe() {
	h := &b.health
	for {
		h.mu.Lock()
		down, watching := h.down, h.watching
		if !down && !watching {
			h.probing = false
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		wait := watchInterval
		if down {
			wait = probeInterval
		}
		if !sleep(b.ctx, wait) {
			h.mu.Lock()
			h.probing = false
			h.mu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(b.ctx, probeTimeout)
		err := b.d.Ping(ctx)
		cancel()
		if b.ctx.Err() != nil {
			continue // closed: the loop ends above
		}
		if err == nil {
			b.markUp()
		} else {
			b.markDown("", err)
		}
	}
}

// subState is whether a receive call of a queue holds an open
// subscription.
type subState struct {
	open int   // receive calls with an open subscription
	err  error // why the last one failed, when none is open
}

// subscribed records a receive call of queue going from having an open
// subscription (was) to having one or not (now); err says why it has
// none.
func (b *Bus) subscribed(queue string, was, now bool, err error) {
	b.subMu.Lock()
	defer b.subMu.Unlock()
	if b.subs == nil {
		b.subs = map[string]*subState{}
	}
	st := b.subs[queue]
	if st == nil {
		st = &subState{}
		b.subs[queue] = st
	}
	switch {
	case now && !was:
		st.open++
	case was && !now:
		st.open--
	}
	if now {
		st.err = nil
	} else if err != nil {
		st.err = err
	}
}

// Subscribed returns an error saying what it waits for when the receive
// calls of queue (QueueIngress or QueueDelivery) hold no open
// subscription, having tried; nil when one holds one, or none has
// started yet.
func (b *Bus) Subscribed(queue string) error {
	b.subMu.Lock()
	defer b.subMu.Unlock()
	st := b.subs[queue]
	switch {
	case st == nil:
		return nil // no receive call yet: nothing failed
	case st.open > 0:
		return nil
	case st.err != nil:
		return errors.New("bus: " + queue + " not subscribed, waiting for the bus: " + st.err.Error())
	}
	return errors.New("bus: " + queue + " not subscribed")
}
