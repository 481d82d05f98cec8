package store

import (
	"context"
	"log/slog"
	"time"
)

// DefaultSweepInterval is the interval Sweep uses when given one <= 0.
const DefaultSweepInterval = time.Minute

// Sweep enforces retention on s until ctx is done, then returns. It sweeps
// once at once and then every interval: it deletes envelopes created more
// than retention ago, and idempotency records of envelopes created and
// tombstones of acks made more than idempotencyWindow ago, and logs how many
// of each it deleted. A retention or window <= 0 disables that half. A failed sweep is logged and tried
// again at the next interval; it never stops Sweep. Several instances may
// sweep the same store at once.
func Sweep(ctx context.Context, s Store, retention, idempotencyWindow, interval time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	if interval <= 0 {
		interval = DefaultSweepInterval
	}
	log = log.With("component", "store", "task", "sweep")
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		sweepOnce(ctx, s, retention, idempotencyWindow, log)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func sweepOnce(ctx context.Context, s Store, retention, idempotencyWindow time.Duration, log *slog.Logger) {
	now := time.Now()
	if retention > 0 {
		n, err := s.DeleteBefore(ctx, now.Add(-retention))
		logSweep(ctx, log, "messages", n, err)
	}
	if idempotencyWindow > 0 {
		cut := now.Add(-idempotencyWindow)
		n, err := s.DeleteIdempotencyBefore(ctx, cut)
		logSweep(ctx, log, "idempotency_records", n, err)
		// A routing event redelivered within the window must find the
		// ack's tombstone (PutMessages): keep it for the window after the
		// ack.
		n, err = s.DeleteTombstonesBefore(ctx, cut)
		logSweep(ctx, log, "ack_tombstones", n, err)
	}
}

func logSweep(ctx context.Context, log *slog.Logger, what string, n int, err error) {
	switch {
	case err != nil && ctx.Err() != nil:
		// Stopping: not a failure.
	case err != nil:
		log.ErrorContext(ctx, "store sweep failed", "what", what, "deleted", n, "err", err)
	case n > 0:
		log.InfoContext(ctx, "store sweep", "what", what, "deleted", n)
	default:
		log.DebugContext(ctx, "store sweep", "what", what, "deleted", n)
	}
}
