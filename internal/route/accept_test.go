package route

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
)

// openStore opens a SQLite store in the test's temporary directory.
func openStore(t *testing.T) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// acceptCore is a core that accepts into st, publishing on b.
func acceptCore(o Options, st Store, b Bus) *Core {
	if o.MaxPayloadBytes == 0 {
		o.MaxPayloadBytes = 16
	}
	o.AcceptTimeout = 5 * time.Second
	o.Logger = slog.New(slog.DiscardHandler)
	return New(o, st, nil, b)
}

// Accept refuses what breaks the contract with an error of the kind and
// field the caller maps to its answer, and accepts nothing then.
func TestAcceptRefusesWithKinds(t *testing.T) {
	const max = 16
	cases := []struct {
		name  string
		msg   Message
		want  *Error
		field string
	}{
		{"recipient not a URN", Message{Recipient: "bob", Payload: "aGk="}, ErrInvalid, FieldRecipient},
		{"no payload", Message{Recipient: "urn:sm:user:bob"}, ErrInvalid, FieldPayload},
		{"payload not base64", Message{Recipient: "urn:sm:user:bob", Payload: "!!!!"}, ErrInvalid, FieldPayload},
		{"payload over the limit", Message{Recipient: "urn:sm:user:bob", Payload: base64.StdEncoding.EncodeToString(make([]byte, max+1))}, ErrTooLarge, FieldPayload},
		{"payload over the limit with line breaks", Message{Recipient: "urn:sm:user:bob",
			Payload: base64.StdEncoding.EncodeToString(make([]byte, max+1))[:12] + "\n" + base64.StdEncoding.EncodeToString(make([]byte, max+1))[12:]}, ErrTooLarge, FieldPayload},
		{"type too long", Message{Recipient: "urn:sm:user:bob", Payload: "aGk=", Type: strings.Repeat("t", 65)}, ErrInvalid, FieldType},
		{"idempotency key of another shape", Message{Recipient: "urn:sm:user:bob", Payload: "aGk=", IdempotencyKey: "a b"}, ErrInvalid, FieldIdempotencyKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, b := openStore(t), &fakeBus{}
			c := acceptCore(Options{MaxPayloadBytes: max}, st, b)
			tc.msg.Sender = "urn:sm:user:alice"
			_, err := c.Accept(t.Context(), tc.msg)
			var e *Error
			if !errors.Is(err, tc.want) || !errors.As(err, &e) || e.Field != tc.field || e.Message == "" {
				t.Fatalf("error %#v, want kind %v on field %q with a message", err, tc.want.Kind, tc.field)
			}
			if n, _ := st.PendingCount(t.Context(), "urn:sm:user:bob"); n != 0 || len(b.requeued()) != 0 {
				t.Fatalf("refused, yet %d stored and %d published", n, len(b.requeued()))
			}
		})
	}
}

// A message is encoded once, at Accept: the routing event's body is the
// envelope's JSON as envelope.Marshal writes it for what the store holds,
// with the payload in canonical base64 even when it arrived with line
// breaks. A stored message's event says so; an ephemeral one is not
// stored.
func TestAcceptEncodesOnce(t *testing.T) {
	st, b := openStore(t), &fakeBus{}
	c := acceptCore(Options{}, st, b)
	for _, payload := range []string{"aGk=", "aGVs\nbG8=", "aGVsbG9="} { // canonical, line break, non-zero trailing bits
		acc, err := c.Accept(t.Context(), Message{Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob", Payload: payload, Type: "<chat>"})
		if err != nil {
			t.Fatalf("%q: %v", payload, err)
		}
		page, err := st.Pending(t.Context(), "urn:sm:user:bob", "", 10)
		if err != nil {
			t.Fatal(err)
		}
		env := page.Envelopes[len(page.Envelopes)-1]
		if env.ID != acc.ID || !env.CreatedAt.Equal(acc.CreatedAt) {
			t.Fatalf("%q: stored %s at %v, answered %s at %v", payload, env.ID, env.CreatedAt, acc.ID, acc.CreatedAt)
		}
		want, _ := envelope.Marshal(env)
		events := b.requeued()
		got := events[len(events)-1]
		if string(got.Data) != string(want) || got.Attributes[bus.AttrStored] != "1" || got.OrderingKey != "urn:sm:user:bob" {
			t.Fatalf("%q: routing event %s %v key %s\nwant %s, stored, keyed by the recipient", payload, got.Data, got.Attributes, got.OrderingKey, want)
		}
	}
	if _, err := c.Accept(t.Context(), Message{Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:carol", Payload: "aGk=", Ephemeral: true}); err != nil {
		t.Fatal(err)
	}
	events := b.requeued()
	ev := events[len(events)-1]
	var env envelope.Envelope
	if err := envelope.Unmarshal(ev.Data, &env); err != nil || !env.Ephemeral || string(env.Payload) != "hi" || ev.Attributes[bus.AttrStored] != "" {
		t.Fatalf("ephemeral event %s %v (%v)", ev.Data, ev.Attributes, err)
	}
	if n, _ := st.PendingCount(t.Context(), "urn:sm:user:carol"); n != 0 {
		t.Fatalf("an ephemeral message was stored (%d pending)", n)
	}
}

// With the in-process hand-off, a stored message's routing event goes to
// this instance's routing, with the same wire form, and not on the
// ingress topic; once the hand-off is full it goes on the topic. An
// ephemeral message takes the same way: the hand-off when it has room
// (never stored, so not marked so), else the topic.
func TestAcceptHandsOffStoredMessages(t *testing.T) {
	st, b := openStore(t), &fakeBus{}
	c := acceptCore(Options{HandoffQueue: 1}, st, b)
	send := func(ephemeral bool) Accepted {
		acc, err := c.Accept(t.Context(), Message{Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob", Payload: "aGk=", Ephemeral: ephemeral})
		if err != nil {
			t.Fatal(err)
		}
		return acc
	}
	first := send(false)
	if len(b.requeued()) != 0 || len(c.handoff.ch) != 1 {
		t.Fatalf("published %d, handed off %d; want the hand-off only", len(b.requeued()), len(c.handoff.ch))
	}
	ev := <-c.handoff.ch
	page, _ := st.Pending(t.Context(), "urn:sm:user:bob", "", 1)
	want, _ := envelope.Marshal(page.Envelopes[0])
	if ev.Envelope.ID != first.ID || !ev.Stored || string(ev.Data) != string(want) || ev.Envelope.Payload != nil {
		t.Fatalf("handed off %+v %s, want the stored message, its wire form only", ev.Envelope, ev.Data)
	}
	send(false)
	second := send(false) // the hand-off holds one: this one goes on the topic
	send(true)
	if got := b.requeued(); len(got) != 2 || got[0].ID != second.ID || got[0].Attributes[bus.AttrStored] != "1" || got[1].Attributes[bus.AttrStored] != "" {
		t.Fatalf("published %v, want the message the full hand-off refused, then the ephemeral one", got)
	}
	<-c.handoff.ch // room again
	eph := send(true)
	if len(b.requeued()) != 2 || len(c.handoff.ch) != 1 {
		t.Fatalf("published %d, handed off %d; want the ephemeral message handed off", len(b.requeued()), len(c.handoff.ch))
	}
	if ev := <-c.handoff.ch; ev.Envelope.ID != eph.ID || ev.Stored || !ev.Envelope.Ephemeral {
		t.Fatalf("handed off %+v (stored %v), want the ephemeral message, not stored", ev.Envelope, ev.Stored)
	}
	if n, _ := st.PendingCount(t.Context(), "urn:sm:user:bob"); n != 3 {
		t.Fatalf("%d pending, want the 3 durable messages only", n)
	}
}

// While the ingress backlog is over its limit, Accept refuses every valid
// message (overloaded, retry after a second) and stores nothing; bad
// input is still refused as bad input; once the backlog is back under,
// Accept accepts again.
func TestAcceptRefusesWhileOverloaded(t *testing.T) {
	st, b := openStore(t), &fakeBus{}
	backlog := make(chan int64, 1)
	backlog <- 10
	c := acceptCore(Options{MaxBacklog: 5, BacklogInterval: time.Millisecond, Backlog: func(ctx context.Context) (int64, error) {
		select {
		case n := <-backlog:
			return n, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}}, st, b)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	poll(t, "the backlog read", func() bool { return c.backlog.overloaded() })
	_, err := c.Accept(t.Context(), Message{Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob", Payload: "aGk="})
	var e *Error
	if !errors.Is(err, ErrOverloaded) || !errors.As(err, &e) || e.RetryAfter != time.Second {
		t.Fatalf("error %v, want overloaded with a retry after 1s", err)
	}
	if n, _ := st.PendingCount(t.Context(), "urn:sm:user:bob"); n != 0 || len(b.requeued()) != 0 {
		t.Fatalf("refused as overloaded, yet %d stored and %d published", n, len(b.requeued()))
	}
	if _, err := c.Accept(t.Context(), Message{Sender: "urn:sm:user:alice", Recipient: "not a urn", Payload: "aGk="}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad input while overloaded: %v, want invalid", err)
	}
	backlog <- 0
	poll(t, "the backlog back under its limit", func() bool { return !c.backlog.overloaded() })
	if _, err := c.Accept(t.Context(), Message{Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob", Payload: "aGk="}); err != nil {
		t.Fatal(err)
	}
}

// poll waits until cond holds, or fails the test after a deadline.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkAccept accepts messages with a 256-byte payload into a store
// and a bus that answer at once: validation, the one encode, the store
// and publish calls.
func BenchmarkAccept(b *testing.B) {
	c := acceptCore(Options{MaxPayloadBytes: 1 << 16}, acceptAll{}, nopBus{})
	payload := base64.StdEncoding.EncodeToString(make([]byte, 256))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Accept(ctx, Message{Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob", Payload: payload}); err != nil {
			b.Fatal(err)
		}
	}
}

// nopBus takes every publish and keeps nothing.
type nopBus struct{}

func (nopBus) PublishIngress(context.Context, *bus.Message) error               { return nil }
func (nopBus) ReceiveIngressBatch(context.Context, int, bus.BatchHandler) error { return nil }
func (nopBus) PublishDeliveries(context.Context, []bus.Delivery) error          { return nil }

// acceptAll stores every new message at once and keeps nothing.
type acceptAll struct{ Store }

func (acceptAll) PutNew(_ context.Context, msgs []store.NewMessage) ([]bool, error) {
	stored := make([]bool, len(msgs))
	for i := range stored {
		stored[i] = true
	}
	return stored, nil
}
