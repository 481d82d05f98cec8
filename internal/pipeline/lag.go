package pipeline

import (
	"context"
	"time"
)

// WatchLag sets the pipeline lag gauge every interval until ctx is done:
// the age of the oldest stored message not routed yet (0 when none); and
// the gauge of messages pending in the store.
func (p *Pipeline) WatchLag(ctx context.Context, every time.Duration) {
	if p.o.Metrics == nil || every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		p.readLag(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Pipeline) readLag(ctx context.Context) {
	if n, err := p.store.PendingTotal(ctx); err == nil {
		p.o.Metrics.StorePending.Set(float64(n))
	} else if ctx.Err() == nil {
		p.log.Debug("pipeline: reading the pending total failed", "err", err)
	}
	now := time.Now()
	// A message routed less than twice MarkDelay ago may not be marked
	// yet: only older ones are looked at.
	envs, err := p.store.Unrouted(ctx, now.Add(-2*p.o.MarkDelay), 1)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Debug("pipeline: reading the oldest unrouted message failed", "err", err)
		}
		return
	}
	lag := 0.0
	if len(envs) == 1 {
		lag = max(0, now.Sub(envs[0].CreatedAt).Seconds())
	}
	p.o.Metrics.PipelineLag.Set(lag)
}
