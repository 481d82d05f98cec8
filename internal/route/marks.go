package route

import (
	"context"
	"sync"
	"time"
)

// maxDeferredMarks bounds the routed marks held back at a time; past it a
// batch's marks are written at once.
const maxDeferredMarks = 100_000

// deferredMarks holds the routed marks of recent batches. A message
// delivered live is usually acknowledged (deleted) within milliseconds:
// marked a moment later, its mark finds nothing to update, and the mark
// never contends with the acknowledgement's delete for the row (on a
// shared database, another instance's transaction).
type deferredMarks struct {
	mu      sync.Mutex
	batches []markBatch
	n       int
}

type markBatch struct {
	at  time.Time
	ids []string
}

// add holds ids back; it reports false, holding nothing, when full.
func (d *deferredMarks) add(now time.Time, ids []string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.n+len(ids) > maxDeferredMarks {
		return false
	}
	d.batches = append(d.batches, markBatch{at: now, ids: ids})
	d.n += len(ids)
	return true
}

// due takes the ids held back since before cutoff (all with a zero
// cutoff).
func (d *deferredMarks) due(cutoff time.Time) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := 0
	for k < len(d.batches) && (cutoff.IsZero() || !d.batches[k].at.After(cutoff)) {
		k++
	}
	if k == 0 {
		return nil
	}
	var ids []string
	for _, b := range d.batches[:k] {
		ids = append(ids, b.ids...)
	}
	d.n -= len(ids)
	clear(d.batches[:k])
	d.batches = d.batches[k:]
	return ids
}

// writeMarksUntil writes the routed marks held back (Options.MarkDelay)
// once they are MarkDelay old, until ctx is done, and then the rest. It
// returns at once when marks are not deferred.
func (c *Core) writeMarksUntil(ctx context.Context) {
	if c.marks == nil {
		return
	}
	t := time.NewTicker(max(c.o.MarkDelay/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.HandlerTimeout)
			c.writeMarks(fctx, c.marks.due(time.Time{}))
			cancel()
			return
		case <-t.C:
		}
		c.writeMarks(ctx, c.marks.due(time.Now().Add(-c.o.MarkDelay)))
	}
}

// writeMarks records that the stored messages with these ids were routed:
// the sweep of unrouted messages leaves them alone. A failure is logged,
// not returned: the envelopes were routed, and the worst it costs is a
// second routing by the sweep.
func (c *Core) writeMarks(ctx context.Context, ids []string) {
	if len(ids) == 0 {
		return
	}
	if err := c.store.MarkRouted(ctx, ids); err != nil {
		c.log.Warn("route: marking routed messages failed; the sweep may route them again", "count", len(ids), "err", err)
		if c.m != nil {
			c.m.RouteMarkFailed.Inc()
		}
	}
}
