package route

import (
	"context"
	"time"
)

// watchLag sets the routing lag gauge every LagInterval until ctx is
// done: the age of the oldest stored message not routed yet (0 when
// none); and the gauge of messages pending in the store.
func (c *Core) watchLag(ctx context.Context) {
	if c.m == nil {
		return
	}
	t := time.NewTicker(c.o.LagInterval)
	defer t.Stop()
	for {
		c.readLag(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Core) readLag(ctx context.Context) {
	if n, err := c.store.PendingTotal(ctx); err == nil {
		c.m.StorePending.Set(float64(n))
	} else if ctx.Err() == nil {
		c.log.Debug("route: reading the pending total failed", "err", err)
	}
	now := time.Now()
	// A message routed less than twice MarkDelay ago may not be marked
	// yet: only older ones are looked at.
	envs, err := c.store.Unrouted(ctx, now.Add(-2*c.o.MarkDelay), 1)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Debug("route: reading the oldest unrouted message failed", "err", err)
		}
		return
	}
	lag := 0.0
	if len(envs) == 1 {
		lag = max(0, now.Sub(envs[0].CreatedAt).Seconds())
	}
	c.m.PipelineLag.Set(lag)
}
