package route

import (
	"context"
	"sync"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/push"
)

// unackedCheckBatch bounds the ids one store lookup checks.
const unackedCheckBatch = 1000

// watched is a stored message routed to a live connection, and when its
// push is due if it is still stored then.
type watched struct {
	due                 time.Time
	recipient, id, kind string
}

// unackedSchedule is a bounded FIFO of watched messages. Every entry gets
// the same delay, so entries are added in (nearly) due order and the due
// ones are at the front.
type unackedSchedule struct {
	mu    sync.Mutex
	q     []watched
	head  int
	limit int
}

// add watches w unless the schedule is full; it reports whether it did.
func (s *unackedSchedule) add(w watched) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.q)-s.head >= s.limit {
		return false
	}
	if s.head > 0 && s.head >= len(s.q)/2 { // reclaim the taken front
		s.q = append(s.q[:0], s.q[s.head:]...)
		s.head = 0
	}
	s.q = append(s.q, w)
	return true
}

// due takes up to n entries due at now, front first.
func (s *unackedSchedule) due(now time.Time, n int) []watched {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []watched
	for s.head < len(s.q) && len(out) < n && !s.q[s.head].due.After(now) {
		out = append(out, s.q[s.head])
		s.q[s.head] = watched{}
		s.head++
	}
	if s.head == len(s.q) {
		s.q, s.head = s.q[:0], 0
	}
	return out
}

func (s *unackedSchedule) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.q) - s.head
}

// watchUnacked schedules a push for env, routed to a live connection, in
// case it is not acknowledged within Options.UnackedAfter.
func (c *Core) watchUnacked(env *envelope.Envelope) {
	if c.unacked == nil {
		return
	}
	if !c.unacked.add(watched{due: time.Now().Add(c.o.UnackedAfter), recipient: env.Recipient, id: env.ID, kind: env.Type}) {
		if c.m != nil {
			c.m.UnackedDropped.Inc()
		}
	}
}

// pushUnacked requests, until ctx is done, a push for each recipient with
// a message that was routed to a live connection (in process or through a
// delivery event) but is still stored Options.UnackedAfter later: a
// crashed instance, a lost presence entry or a stuck socket never leaves a
// recipient without a wake-up. The schedule lives in memory: it is lost
// with this instance (the messages stay stored and reach the recipient on
// reconnect). It returns at once when UnackedAfter <= 0 or there is no
// Notifier.
func (c *Core) pushUnacked(ctx context.Context) {
	if c.unacked == nil {
		return
	}
	t := time.NewTicker(min(max(c.o.UnackedAfter/4, 10*time.Millisecond), time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for ctx.Err() == nil {
			ws := c.unacked.due(time.Now(), unackedCheckBatch)
			if len(ws) == 0 {
				break
			}
			c.pushFor(ctx, ws)
		}
	}
}

// pushFor requests one push per recipient of ws whose messages are
// still stored (for the latest of them). When the store cannot tell, it
// requests them all: a needless wake-up costs less than a missed one.
func (c *Core) pushFor(ctx context.Context, ws []watched) {
	ids := make([]string, len(ws))
	for i, w := range ws {
		ids[i] = w.id
	}
	cctx, cancel := context.WithTimeout(ctx, c.o.HandlerTimeout)
	stored, err := c.store.Stored(cctx, ids)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("route: checking unacknowledged messages failed; pushing for all of them", "count", len(ws), "err", err)
		stored = ids
	}
	still := make(map[string]bool, len(stored))
	for _, id := range stored {
		still[id] = true
	}
	latest := map[string]watched{}
	var order []string
	for _, w := range ws {
		if !still[w.id] {
			continue
		}
		if _, ok := latest[w.recipient]; !ok {
			order = append(order, w.recipient)
		}
		latest[w.recipient] = w
	}
	for _, r := range order {
		w := latest[r]
		c.o.Notifier.Notify(push.Notification{Recipient: w.recipient, MessageID: w.id, Type: w.kind})
		if c.m != nil {
			c.m.PushRequested.Inc()
			c.m.PushUnacked.Inc()
		}
	}
}
