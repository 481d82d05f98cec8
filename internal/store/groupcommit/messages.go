package groupcommit

import (
	"context"
	"fmt"
	"slices"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// The store adapters' message writes (PutMessages, PutNew, MarkRouted,
// Ack) all go through one Writer whose result per item is a bool; these
// submit them, each adapter saying how it makes an item. engine prefixes
// the errors.

// PutMessages submits envs as one request (item makes each one's write)
// and returns store.Messages.PutMessages's answer: nil when no envelope
// was acknowledged before, else which were.
func PutMessages[E any](ctx context.Context, w *Writer[E, bool], engine string, envs []*envelope.Envelope, item func(*envelope.Envelope) E) ([]bool, error) {
	if len(envs) == 0 {
		return nil, nil
	}
	items := make([]E, len(envs))
	for i, e := range envs {
		if e == nil || e.ID == "" {
			return nil, fmt.Errorf("%s put: envelope %d has no id", engine, i)
		}
		items[i] = item(e)
	}
	acked := make([]bool, len(envs))
	if err := submit(ctx, w, engine+" put", items, acked); err != nil || !slices.Contains(acked, true) {
		return nil, err
	}
	return acked, nil
}

// PutNew submits msgs as one request (item makes each one's write) and
// returns store.Messages.PutNew's answer: whether each was stored.
func PutNew[E any](ctx context.Context, w *Writer[E, bool], engine string, msgs []store.NewMessage, item func(store.NewMessage) E) ([]bool, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	items := make([]E, len(msgs))
	for i, m := range msgs {
		if m.Envelope == nil || m.Envelope.ID == "" {
			return nil, fmt.Errorf("%s put new: envelope %d has no id", engine, i)
		}
		items[i] = item(m)
	}
	stored := make([]bool, len(msgs))
	if err := submit(ctx, w, engine+" put new", items, stored); err != nil {
		return nil, err
	}
	return stored, nil
}

// MarkRouted submits routed marks of ids as one request.
func MarkRouted[E any](ctx context.Context, w *Writer[E, bool], engine string, ids []string, item func(id string) E) error {
	if len(ids) == 0 {
		return nil
	}
	items := make([]E, len(ids))
	for i, id := range ids {
		items[i] = item(id)
	}
	return submit(ctx, w, engine+" mark routed", items, nil)
}

// Ack submits acks of ids as one request and returns how many envelopes
// they deleted (the items' true results).
func Ack[E any](ctx context.Context, w *Writer[E, bool], engine string, ids []string, item func(id string) E) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	items := make([]E, len(ids))
	for i, id := range ids {
		items[i] = item(id)
	}
	deleted := make([]bool, len(ids))
	if err := submit(ctx, w, engine+" ack", items, deleted); err != nil {
		return 0, err
	}
	n := 0
	for _, d := range deleted {
		if d {
			n++
		}
	}
	return n, nil
}

// submit is Writer.Submit with the context's error (returned as itself by
// Submit) given the operation's name.
func submit[E any](ctx context.Context, w *Writer[E, bool], op string, items []E, results []bool) error {
	err := w.Submit(ctx, items, results)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr {
		return fmt.Errorf("%s: %w", op, err)
	}
	return err
}
