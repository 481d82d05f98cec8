package route

import (
	"context"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// sweepBatch bounds the messages one sweep round routes.
const sweepBatch = 256

// sweep routes, every RerouteAfter/3 until ctx is done, the stored
// messages more than RerouteAfter old that were never routed: their
// routing event was not published (the bus was down when Accept stored
// them, or the instance died between its commit and the publish or with
// events in its hand-off) or was lost. They are routed like any other:
// live to the recipient's instances, or a push. Delivery is at-least-once:
// a message whose routing event merely took longer than RerouteAfter is
// routed twice, which clients tolerate.
func (c *Core) sweep(ctx context.Context) {
	after := c.o.RerouteAfter
	if after <= 0 {
		return
	}
	t := time.NewTicker(max(after/3, 100*time.Millisecond))
	defer t.Stop()
	for {
		// A full round may mean more are waiting: go on, a bounded number
		// of rounds per tick (the same messages come back if their routed
		// mark cannot be stored).
		for range 40 {
			if c.sweepOnce(ctx, after) < sweepBatch || ctx.Err() != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweepOnce routes one round of unrouted messages and returns how many it
// found. Each is encoded once, from its store row.
func (c *Core) sweepOnce(ctx context.Context, after time.Duration) int {
	start := time.Now()
	envs, err := c.store.Unrouted(ctx, start.Add(-after), sweepBatch)
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
		data, err := envelope.Marshal(env)
		if err != nil {
			c.log.Error("route: encoding a stored message failed", "id", env.ID, "err", err)
			continue
		}
		evs = append(evs, Event{Envelope: env, Data: data, Stored: true})
	}
	errs := c.route(ctx, evs, false)
	c.countRouted(start, errs)
	routed := 0
	for i, err := range errs {
		if err != nil {
			c.log.Warn("route: routing an unrouted message failed; the next sweep tries again", "id", evs[i].Envelope.ID, "err", err)
			continue
		}
		routed++
	}
	if routed > 0 {
		c.log.Warn("route: routed messages whose routing event was lost or never published", "count", routed)
		if c.m != nil {
			c.m.Rerouted.Add(float64(routed))
		}
	}
	return len(envs)
}
