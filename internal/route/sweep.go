package route

import (
	"context"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// sweepBatch bounds the messages one sweep round routes.
const sweepBatch = 256

// sweepLease is the name of the store lease held by the instance that
// sweeps.
const sweepLease = "sweep"

// leaser is a store that hands out leases (store.Leases): one pipeline
// instance sweeps at a time.
type leaser interface {
	HoldLease(ctx context.Context, name string) (bool, error)
	ReleaseLease(ctx context.Context, name string) error
}

// sweep routes, every RerouteAfter/3 until ctx is done, the stored
// messages more than RerouteAfter old that were never routed: their
// routing event was not published (the bus was down when Accept stored
// them, or the instance died between its commit and the publish or with
// events in its hand-off) or was lost. They are routed like any other:
// live to the recipient's instances, or a push. Delivery is at-least-once:
// a message whose routing event merely took longer than RerouteAfter is
// routed twice, which clients tolerate.
//
// When the bus takes publishes again after failing them (bus.Bus's
// OnRecovered), it sweeps at once, whatever their age, the messages
// stored before that moment, and again 1 s and 2 s later those stored
// until 250 ms before (an api instance that reconnects later than this
// one failed its publishes a little longer): those accepted while the
// bus was down reach their connected recipients within moments of its
// return rather than RerouteAfter later. This instance's routed marks held back are written
// first, and the events it holds for the bus are left out (it routes
// those itself); a message another instance routed in its last MarkDelay
// may be routed again (at-least-once).
//
// With a store that hands out leases, only the instance holding the
// sweep lease sweeps; it takes or keeps it before each round, and another
// takes it over within a round's interval once the holder is gone.
func (c *Core) sweep(ctx context.Context) {
	after := c.o.RerouteAfter
	if after <= 0 {
		return
	}
	recovered := make(chan struct{}, 1)
	if r, ok := c.bus.(recoverer); ok {
		defer r.OnRecovered(func() {
			select {
			case recovered <- struct{}{}:
			default:
			}
		})()
	}
	lease, _ := c.store.(leaser)
	holding := false
	defer func() {
		if holding {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := lease.ReleaseLease(rctx, sweepLease); err != nil {
				c.log.Warn("route: releasing the sweep lease failed (the store frees it when the connection ends)", "err", err)
			}
		}
	}()
	// mayHold reports whether this instance sweeps now.
	mayHold := func() bool {
		if lease == nil {
			return true
		}
		held, err := lease.HoldLease(ctx, sweepLease)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("route: the sweep lease could not be taken or kept; not sweeping this round", "err", err)
			}
			held = false
		}
		if held != holding && ctx.Err() == nil {
			if held {
				c.log.Info("route: this instance sweeps unrouted messages (it holds the sweep lease)")
			} else {
				c.log.Info("route: another instance sweeps unrouted messages (it holds the sweep lease)")
			}
		}
		holding = held
		return held
	}
	t := time.NewTicker(max(after/3, 100*time.Millisecond))
	defer t.Stop()
	// After a recovery, follow-up rounds: other instances reconnect a
	// moment later than this one, and what their Accept failed to publish
	// meanwhile is swept by these.
	var followUps []time.Time
	var next *time.Timer
	var nextC <-chan time.Time
	defer func() {
		if next != nil {
			next.Stop()
		}
	}()
	var before time.Time // the recovery round's bound; zero: a timed round
	for {
		if mayHold() {
			var skip map[string]bool
			if !before.IsZero() {
				skip = c.flushForRecovery(ctx)
			}
			// A full round may mean more are waiting: go on, a bounded
			// number of rounds per tick (the same messages come back if
			// their routed mark cannot be stored).
			for range 40 {
				if c.sweepOnce(ctx, after, before, skip) < sweepBatch || ctx.Err() != nil {
					break
				}
			}
		}
		before = time.Time{}
		if nextC == nil && len(followUps) > 0 {
			next = time.NewTimer(time.Until(followUps[0]))
			nextC = next.C
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-recovered:
			now := time.Now()
			before = now
			followUps = []time.Time{now.Add(recoveryFollowUp), now.Add(2 * recoveryFollowUp)}
			if next != nil {
				next.Stop()
			}
			next, nextC = nil, nil
			c.log.Info("route: the bus recovered; sweeping the messages stored while it was down")
		case <-nextC:
			next, nextC = nil, nil
			before = followUps[0].Add(-recoveryFollowUpMargin)
			followUps = followUps[1:]
		}
	}
}

// recoveryFollowUp spaces the rounds after a recovery round; each sweeps
// what was stored until recoveryFollowUpMargin before it, whatever its
// age (the routing events of messages stored since are on their way).
const (
	recoveryFollowUp       = time.Second
	recoveryFollowUpMargin = 250 * time.Millisecond
)

// flushForRecovery writes this instance's routed marks held back (so that
// the recovery sweep does not route those messages again) and returns the
// ids of the events it holds for the bus.
func (c *Core) flushForRecovery(ctx context.Context) map[string]bool {
	if c.marks != nil {
		if ids := c.marks.due(time.Time{}); len(ids) > 0 {
			c.writeMarks(ctx, ids)
		}
	}
	q := c.handoff
	if q == nil {
		return nil
	}
	q.heldMu.Lock()
	defer q.heldMu.Unlock()
	if len(q.held) == 0 {
		return nil
	}
	skip := make(map[string]bool, len(q.held))
	for _, ev := range q.held {
		skip[ev.Envelope.ID] = true
	}
	return skip
}

// sweepOnce routes one round of unrouted messages and returns how many it
// found: those stored more than after ago, or, with a non-zero before
// (the bus recovered), those stored before it, less the ids in skip. Each
// is encoded once, from its store row.
func (c *Core) sweepOnce(ctx context.Context, after time.Duration, before time.Time, skip map[string]bool) int {
	start := time.Now()
	if before.IsZero() {
		before = start.Add(-after)
	}
	envs, err := c.store.Unrouted(ctx, before, sweepBatch)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("route: reading unrouted messages failed", "err", err)
		}
		return 0
	}
	if len(envs) == 0 {
		return 0
	}
	evs := make([]Event, 0, len(envs))
	for _, env := range envs {
		if skip[env.ID] {
			continue
		}
		data, err := envelope.Marshal(env)
		if err != nil {
			c.log.Error("route: encoding a stored message failed", "id", env.ID, "err", err)
			continue
		}
		evs = append(evs, Event{Envelope: env, Data: data, Stored: true})
	}
	errs := c.route(ctx, evs, false)
	c.countRouted(start, errs)
	routed, failed := 0, 0
	var firstErr error
	var firstID string
	for i, err := range errs {
		if err != nil {
			if failed == 0 {
				firstErr, firstID = err, evs[i].Envelope.ID
			}
			failed++
			continue
		}
		routed++
	}
	if failed > 0 {
		c.log.Warn("route: routing unrouted messages failed; the next sweep tries again", "count", failed, "first_id", firstID, "err", firstErr)
	}
	if routed > 0 {
		c.log.Warn("route: routed messages whose routing event was lost or never published", "count", routed)
		if c.m != nil {
			c.m.Rerouted.Add(float64(routed))
		}
	}
	return len(envs)
}
