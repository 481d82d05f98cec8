package route

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// backlog tells Accept when routing is too far behind to take more: it
// watches the ingress backlog (routing events published and not yet
// routed) and reports overload while it is over a limit, so that a burst
// is absorbed by the queue but a steady overload is pushed back to the
// senders (ErrOverloaded, retry after a second) instead of growing the
// lag without bound.
type backlog struct {
	read     func(context.Context) (int64, error)
	max      int64
	interval time.Duration
	log      *slog.Logger

	n atomic.Int64
}

// run reads the backlog every interval until ctx is done. A failed read
// keeps the last value (the bus's own failures refuse sends anyway).
func (b *backlog) run(ctx context.Context) {
	t := time.NewTicker(b.interval)
	defer t.Stop()
	over := false
	for {
		rctx, cancel := context.WithTimeout(ctx, b.interval)
		n, err := b.read(rctx)
		cancel()
		if err == nil {
			b.n.Store(n)
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

// overloaded reports whether the last backlog read was over the limit.
func (b *backlog) overloaded() bool {
	return b != nil && b.n.Load() > b.max
}
