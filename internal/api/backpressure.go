package api

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// Backpressure tells the API when the routing pipeline is too far behind
// to take more: it watches the ingress backlog (messages accepted and not
// yet routed) and reports overload while it is over a limit, so that a
// burst is absorbed by the queue but a steady overload is pushed back to
// the senders (503 with Retry-After) instead of growing the lag without
// bound.
type Backpressure struct {
	read     func(context.Context) (int64, error)
	max      int64
	interval time.Duration
	log      *slog.Logger

	backlog atomic.Int64
}

// NewBackpressure returns a watcher of read's backlog with the limit max,
// read every interval once Run runs.
func NewBackpressure(read func(context.Context) (int64, error), max int64, interval time.Duration, log *slog.Logger) *Backpressure {
	if log == nil {
		log = slog.Default()
	}
	return &Backpressure{read: read, max: max, interval: interval, log: log}
}

// Run reads the backlog every interval until ctx is done. A failed read
// keeps the last value (the bus's own failures answer 503 anyway).
func (b *Backpressure) Run(ctx context.Context) {
	t := time.NewTicker(b.interval)
	defer t.Stop()
	over := false
	for {
		rctx, cancel := context.WithTimeout(ctx, b.interval)
		n, err := b.read(rctx)
		cancel()
		if err == nil {
			b.backlog.Store(n)
			if now := n > b.max; now != over {
				over = now
				if over {
					b.log.Warn("ingress backlog over its limit: refusing new messages until the pipeline catches up", "backlog", n, "limit", b.max)
				} else {
					b.log.Info("ingress backlog back under its limit", "backlog", n, "limit", b.max)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Overloaded reports whether the last backlog read was over the limit.
func (b *Backpressure) Overloaded() bool {
	return b != nil && b.backlog.Load() > b.max
}

// Backlog is the last backlog read.
func (b *Backpressure) Backlog() int64 {
	if b == nil {
		return 0
	}
	return b.backlog.Load()
}
