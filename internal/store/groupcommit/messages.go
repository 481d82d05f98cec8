package groupcommit

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// Kind says what one Item of a store adapter's writer does.
type Kind uint8

const (
	PutItem  Kind = iota // store Env (PutMessages)
	NewItem              // store Env as a new message, under its claim if any (PutNew)
	AckItem              // delete Recipient's envelope ID, with a tombstone if it needs one (Ack)
	MarkItem             // mark the envelope ID routed (MarkRouted)
)

// Item is one item of a store adapter's group-commit writer: one envelope
// of a PutMessages or PutNew call, one id of an Ack call, or one id of a
// MarkRouted call. Its result (the writer's R) is, for a put, whether the
// id had a tombstone (so the envelope was not stored); for a new message,
// whether it is stored (see store.Messages.PutNew); and for an ack,
// whether this item deleted the envelope.
type Item struct {
	Kind      Kind
	Env       *envelope.Envelope // PutItem, NewItem
	Key       string             // NewItem: the idempotency key claimed ("" for none)
	Check     bool               // NewItem: CheckTombstone
	ID        string             // AckItem, MarkItem
	Recipient string             // AckItem
}

// ChecksTombstone reports whether it is a put that must not store an id
// with a tombstone.
func (it Item) ChecksTombstone() bool {
	return it.Kind == PutItem || (it.Kind == NewItem && it.Check)
}

// Messages is a store adapter's message writes (PutMessages, PutNew,
// MarkRouted, Ack; see store.Messages): each call becomes one request of
// Items to the adapter's Writer, which commits it together with the
// requests waiting at the same time, as if each ran alone in the order
// they reached it. A call returns once its request is committed, or with
// ctx's error if ctx ends first, in which case its writes may or may not
// be committed; store.ErrClosed once the Store is closed. A Store embeds
// it (see NewMessages); its methods are safe for concurrent use.
type Messages struct {
	writer *Writer[Item, bool]
	engine string       // prefixes the errors
	closed *atomic.Bool // the Store's closed flag
}

// NewMessages returns the message writes through w of the Store whose
// closed flag is closed; engine (e.g. "postgres") prefixes their errors.
func NewMessages(w *Writer[Item, bool], engine string, closed *atomic.Bool) Messages {
	return Messages{writer: w, engine: engine, closed: closed}
}

// PutMessages stores envs, not routed, idempotently on id, in the order
// given, except those whose id has a tombstone (acked[i] true; it returns
// nil when no envelope was acknowledged before; see store.Messages).
func (m Messages) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	if m.closed.Load() {
		return nil, store.ErrClosed
	}
	if len(envs) == 0 {
		return nil, nil
	}
	items := make([]Item, len(envs))
	for i, e := range envs {
		if e == nil || e.ID == "" {
			return nil, fmt.Errorf("%s put: envelope %d has no id", m.engine, i)
		}
		items[i] = Item{Kind: PutItem, Env: e}
	}
	acked := make([]bool, len(envs))
	if err := m.submit(ctx, "put", items, acked); err != nil || !slices.Contains(acked, true) {
		return nil, err
	}
	return acked, nil
}

// PutNew stores msgs' envelopes as new messages, not routed, in the order
// given, without a tombstone lookup (except for those with
// CheckTombstone) and marked so that their acks record none; one with a
// claim only if the commit that stores it claims its idempotency record.
// It returns whether each was stored (see store.Messages.PutNew).
func (m Messages) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	if m.closed.Load() {
		return nil, store.ErrClosed
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	items := make([]Item, len(msgs))
	for i, msg := range msgs {
		if msg.Envelope == nil || msg.Envelope.ID == "" {
			return nil, fmt.Errorf("%s put new: envelope %d has no id", m.engine, i)
		}
		items[i] = Item{Kind: NewItem, Env: msg.Envelope, Key: msg.Key, Check: msg.CheckTombstone}
	}
	stored := make([]bool, len(msgs))
	if err := m.submit(ctx, "put new", items, stored); err != nil {
		return nil, err
	}
	return stored, nil
}

// MarkRouted marks the stored envelopes with these ids routed, ignoring
// ids not stored.
func (m Messages) MarkRouted(ctx context.Context, ids []string) error {
	if m.closed.Load() {
		return store.ErrClosed
	}
	if len(ids) == 0 {
		return nil
	}
	items := make([]Item, len(ids))
	for i, id := range ids {
		items[i] = Item{Kind: MarkItem, ID: id}
	}
	return m.submit(ctx, "mark routed", items, nil)
}

// Ack deletes recipient's envelopes with these ids, records a tombstone of
// each that needs one (stored by PutMessages) in the same commit, and
// returns how many it deleted; other recipients' and unknown ids are
// ignored, and an id given twice is counted once.
func (m Messages) Ack(ctx context.Context, recipient string, ids []string) (int, error) {
	if m.closed.Load() {
		return 0, store.ErrClosed
	}
	if len(ids) == 0 {
		return 0, nil
	}
	items := make([]Item, len(ids))
	for i, id := range ids {
		items[i] = Item{Kind: AckItem, ID: id, Recipient: recipient}
	}
	deleted := make([]bool, len(ids))
	if err := m.submit(ctx, "ack", items, deleted); err != nil {
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
// Submit) given the engine's and the operation's names.
func (m Messages) submit(ctx context.Context, op string, items []Item, results []bool) error {
	err := m.writer.Submit(ctx, items, results)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr {
		return fmt.Errorf("%s %s: %w", m.engine, op, err)
	}
	return err
}
