package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// DeadMessage is one message in a dead-letter queue.
type DeadMessage struct {
	// ID identifies the message within its dead-letter queue.
	ID string
	// Queue is QueueIngress or QueueDelivery.
	Queue string
	// Message is the original message (id, data, attributes, ordering key).
	Message Message
	// Reason says why it was dead-lettered.
	Reason string
	// Attempts is how many deliveries were attempted.
	Attempts int
	// DeadAt is when it was dead-lettered (zero when unknown).
	DeadAt time.Time
}

func checkQueue(queue string) error {
	if queue != QueueIngress && queue != QueueDelivery {
		return fmt.Errorf("unknown queue %q (want %s or %s)", queue, QueueIngress, QueueDelivery)
	}
	return nil
}

// ListDead returns up to limit dead messages of queue (all when limit <= 0),
// oldest first.
func (b *Bus) ListDead(ctx context.Context, queue string, limit int) ([]DeadMessage, error) {
	if b.isClosed() {
		return nil, ErrClosed
	}
	if err := checkQueue(queue); err != nil {
		return nil, fmt.Errorf("bus: list dead: %w", err)
	}
	ds, err := b.d.ListDead(ctx, queue, limit)
	if err != nil {
		return nil, fmt.Errorf("bus: list dead %s: %w", queue, err)
	}
	out := make([]DeadMessage, len(ds))
	for i, d := range ds {
		out[i] = b.toDead(queue, d)
	}
	return out, nil
}

// GetDead returns one dead message, or an error wrapping ErrNotFound.
func (b *Bus) GetDead(ctx context.Context, queue, id string) (DeadMessage, error) {
	if b.isClosed() {
		return DeadMessage{}, ErrClosed
	}
	if err := checkQueue(queue); err != nil {
		return DeadMessage{}, fmt.Errorf("bus: get dead: %w", err)
	}
	d, err := b.d.GetDead(ctx, queue, id)
	if err != nil {
		return DeadMessage{}, fmt.Errorf("bus: get dead %s %s: %w", queue, id, err)
	}
	return b.toDead(queue, d), nil
}

// ReplayDead publishes the dead messages with these ids (all when ids is
// nil) back on their queue, with their id, attributes and ordering key
// (delivery events to the instance they were addressed to), then removes
// them from the dead-letter queue. Unknown ids are skipped. It returns how
// many were replayed; a message whose publish failed stays dead.
func (b *Bus) ReplayDead(ctx context.Context, queue string, ids []string) (int, error) {
	if b.isClosed() {
		return 0, ErrClosed
	}
	if err := checkQueue(queue); err != nil {
		return 0, fmt.Errorf("bus: replay dead: %w", err)
	}
	b.deadOps.Lock()
	defer b.deadOps.Unlock()
	dead, err := b.selectDead(ctx, queue, ids)
	if err != nil {
		return 0, fmt.Errorf("bus: replay dead %s: %w", queue, err)
	}
	var (
		ms    []*driver.Message
		done  []string
		errs  []error
		spans []trace.Span
	)
	for _, d := range dead {
		var span trace.Span
		if b.tracer != nil {
			span = b.startReplay(ctx, queue, d)
		}
		m, err := replayCopy(queue, d, spanContext(span))
		if err != nil {
			if span != nil {
				endSpan(span, err)
			}
			errs = append(errs, err)
			continue
		}
		if span != nil {
			spans = append(spans, span)
		}
		ms = append(ms, m)
		done = append(done, d.ID)
	}
	if len(ms) > 0 {
		err := b.d.Publish(ctx, queue, ms)
		for _, s := range spans {
			endSpan(s, err)
		}
		if err != nil {
			return 0, fmt.Errorf("bus: replay dead %s: %w", queue, errors.Join(append(errs, err)...))
		}
		if _, err := b.d.DeleteDead(ctx, queue, done); err != nil {
			errs = append(errs, fmt.Errorf("remove replayed messages (they may be replayed twice): %w", err))
		}
		b.log.Info("replayed dead messages", "queue", queue, "count", len(done))
	}
	if err := errors.Join(errs...); err != nil {
		return len(done), fmt.Errorf("bus: replay dead %s: %w", queue, err)
	}
	return len(done), nil
}

// selectDead returns the dead messages with these ids (all when ids is nil).
func (b *Bus) selectDead(ctx context.Context, queue string, ids []string) ([]DeadMessage, error) {
	if ids == nil {
		ds, err := b.d.ListDead(ctx, queue, 0)
		if err != nil {
			return nil, err
		}
		out := make([]DeadMessage, len(ds))
		for i, d := range ds {
			out[i] = b.toDead(queue, d)
		}
		return out, nil
	}
	var out []DeadMessage
	for _, id := range ids {
		d, err := b.d.GetDead(ctx, queue, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", id, err)
		}
		out = append(out, b.toDead(queue, d))
	}
	return out, nil
}

// PurgeDead deletes the dead messages with these ids (all when ids is nil)
// and returns how many it deleted.
func (b *Bus) PurgeDead(ctx context.Context, queue string, ids []string) (int, error) {
	if b.isClosed() {
		return 0, ErrClosed
	}
	if err := checkQueue(queue); err != nil {
		return 0, fmt.Errorf("bus: purge dead: %w", err)
	}
	b.deadOps.Lock()
	defer b.deadOps.Unlock()
	n, err := b.d.DeleteDead(ctx, queue, ids)
	if err != nil {
		return n, fmt.Errorf("bus: purge dead %s: %w", queue, err)
	}
	if n > 0 {
		b.log.Info("purged dead messages", "queue", queue, "count", n)
	}
	return n, nil
}
