package route

import (
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
)

// batchStore is a SQLite store that counts PutNew calls and can fail
// them.
type batchStore struct {
	*sqlite.Store
	mu      sync.Mutex
	putNews [][]store.NewMessage
	putErr  error
}

func (s *batchStore) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	s.mu.Lock()
	s.putNews = append(s.putNews, msgs)
	err := s.putErr
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s.Store.PutNew(ctx, msgs)
}

func (s *batchStore) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.putNews)
}

const alice = "urn:sm:user:alice"

// msg is a message from alice to recipient with payload "hi" (and key,
// when not "").
func msg(recipient, key string) Message {
	return Message{Sender: alice, Recipient: recipient, Payload: "aGk=", Type: "chat", IdempotencyKey: key}
}

// pendingOf returns the ids pending for recipient, oldest first.
func pendingOf(t *testing.T, st Store, recipient string) []string {
	t.Helper()
	page, err := st.(interface {
		Pending(context.Context, string, string, int) (store.Page, error)
	}).Pending(t.Context(), recipient, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(page.Envelopes))
	for i, e := range page.Envelopes {
		ids[i] = e.ID
	}
	return ids
}

// AcceptBatch stores every message of a batch with one PutNew call (one
// commit), answers in the order of the request, and hands each routing
// event on, marked stored.
func TestAcceptBatchStoresAllInOneCommit(t *testing.T) {
	st, b := &batchStore{Store: openStore(t)}, &fakeBus{}
	c := acceptCore(Options{MaxPendingPerRecipient: 100, MaxPendingPerSender: 100, MaxPendingBytesPerSender: 1000}, st, b)
	msgs := []Message{msg("urn:sm:user:bob", ""), msg("urn:sm:user:carol", "k1"), msg("urn:sm:user:bob", ""), msg("urn:sm:user:dave", "k2")}
	accs, err := c.AcceptBatch(t.Context(), msgs)
	if err != nil {
		t.Fatal(err)
	}
	if st.calls() != 1 || len(st.putNews[0]) != 4 {
		t.Fatalf("PutNew calls %d, want one of the 4 messages", st.calls())
	}
	if len(accs) != 4 {
		t.Fatalf("%d answers, want 4", len(accs))
	}
	for i, m := range st.putNews[0] {
		if m.Envelope.ID != accs[i].ID || !m.Envelope.CreatedAt.Equal(accs[i].CreatedAt) || m.Envelope.Recipient != msgs[i].Recipient {
			t.Fatalf("answer %d is %+v, stored %s to %s: want the answers in request order", i, accs[i], m.Envelope.ID, m.Envelope.Recipient)
		}
		if m.Key != msgs[i].IdempotencyKey {
			t.Fatalf("message %d stored under claim %q, want %q", i, m.Key, msgs[i].IdempotencyKey)
		}
	}
	if got := pendingOf(t, st, "urn:sm:user:bob"); !slices.Equal(got, []string{accs[0].ID, accs[2].ID}) {
		t.Fatalf("bob pending %v, want %s %s", got, accs[0].ID, accs[2].ID)
	}
	events := b.requeued()
	if len(events) != 4 {
		t.Fatalf("%d routing events, want 4", len(events))
	}
	for i, ev := range events {
		if ev.ID != accs[i].ID || ev.Attributes[bus.AttrStored] != "1" || ev.OrderingKey != msgs[i].Recipient {
			t.Fatalf("routing event %d: %s %v key %s, want %s, stored, keyed by its recipient", i, ev.ID, ev.Attributes, ev.OrderingKey, accs[i].ID)
		}
	}
}

// A batch with a message that breaks the contract, an ephemeral message
// or a key given twice is refused as a whole, naming the first message at
// fault; nothing is stored or published, and no key stays reserved.
func TestAcceptBatchRefusesABadMessageByIndex(t *testing.T) {
	big := base64.StdEncoding.EncodeToString(make([]byte, 17))
	cases := []struct {
		name  string
		bad   func(ms []Message) // changes a batch of five good messages
		index int
		want  *Error
		field string
	}{
		{"recipient not a URN", func(ms []Message) { ms[2].Recipient = "bob" }, 2, ErrInvalid, FieldRecipient},
		{"payload not base64", func(ms []Message) { ms[4].Payload = "!!" }, 4, ErrInvalid, FieldPayload},
		{"payload over the limit", func(ms []Message) { ms[1].Payload = big }, 1, ErrTooLarge, FieldPayload},
		{"two bad: the first named", func(ms []Message) { ms[3].Recipient = "x"; ms[1].Recipient = "y" }, 1, ErrInvalid, FieldRecipient},
		{"ephemeral", func(ms []Message) { ms[3].Ephemeral = true }, 3, ErrInvalid, FieldEphemeral},
		{"a key twice", func(ms []Message) { ms[4].IdempotencyKey = ms[1].IdempotencyKey }, 4, ErrInvalid, FieldIdempotencyKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, b := &batchStore{Store: openStore(t)}, &fakeBus{}
			c := acceptCore(Options{MaxPayloadBytes: 16}, st, b)
			ms := make([]Message, 5)
			for i := range ms {
				ms[i] = msg("urn:sm:user:bob", "key-"+strconv.Itoa(i))
			}
			tc.bad(ms)
			_, err := c.AcceptBatch(t.Context(), ms)
			var ie *ItemError
			var e *Error
			if !errors.As(err, &ie) || ie.Index != tc.index || !errors.Is(err, tc.want) || !errors.As(err, &e) || e.Field != tc.field || e.Message == "" {
				t.Fatalf("error %v, want one of message %d, kind %v on field %q", err, tc.index, tc.want.Kind, tc.field)
			}
			if st.calls() != 0 || len(b.requeued()) != 0 || len(pendingOf(t, st, "urn:sm:user:bob")) != 0 {
				t.Fatalf("refused, yet %d puts and %d published", st.calls(), len(b.requeued()))
			}
			rec := store.Idempotency{Sender: alice, Key: "key-0", ID: "probe", CreatedAt: envelope.Now(), RequestHash: []byte{1}}
			if _, fresh, err := st.ReserveIdempotency(t.Context(), rec); err != nil || !fresh {
				t.Fatalf("key-0 after the refusal: fresh %v (%v), want it never reserved", fresh, err)
			}
		})
	}
}

// A recipient whose queue has no room for its messages of the batch
// refuses the whole batch (recipient_queue_full) naming its first message;
// the keys the batch reserved are released, so that the batch sent again
// once there is room is accepted.
func TestAcceptBatchRecipientQueueFull(t *testing.T) {
	st, b := &batchStore{Store: openStore(t)}, &fakeBus{}
	c := acceptCore(Options{MaxPendingPerRecipient: 2}, st, b)
	for range 2 {
		if _, err := c.Accept(t.Context(), msg("urn:sm:user:bob", "")); err != nil {
			t.Fatal(err)
		}
	}
	batch := []Message{msg("urn:sm:user:carol", "c1"), msg("urn:sm:user:bob", "b1"), msg("urn:sm:user:bob", "b2")}
	_, err := c.AcceptBatch(t.Context(), batch)
	var ie *ItemError
	if !errors.Is(err, ErrQueueFull) || !errors.As(err, &ie) || ie.Index != 1 {
		t.Fatalf("error %v, want recipient_queue_full naming message 1", err)
	}
	if n := len(pendingOf(t, st, "urn:sm:user:carol")); n != 0 || len(pendingOf(t, st, "urn:sm:user:bob")) != 2 {
		t.Fatalf("refused, yet carol has %d pending", n)
	}
	// Room for one of bob's two: still refused.
	bobs := pendingOf(t, st, "urn:sm:user:bob")
	if _, err := st.Ack(t.Context(), "urn:sm:user:bob", bobs[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AcceptBatch(t.Context(), batch); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("with room for one of two: %v, want recipient_queue_full", err)
	}
	if _, err := st.Ack(t.Context(), "urn:sm:user:bob", bobs[1:]); err != nil {
		t.Fatal(err)
	}
	accs, err := c.AcceptBatch(t.Context(), batch)
	if err != nil {
		t.Fatalf("with room: %v", err)
	}
	if got := pendingOf(t, st, "urn:sm:user:bob"); !slices.Equal(got, []string{accs[1].ID, accs[2].ID}) {
		t.Fatalf("bob pending %v, want the batch's two", got)
	}
}

// The sender's quota is checked for the batch's messages together; over
// it the batch is refused as a whole, with no index.
func TestAcceptBatchSenderQuota(t *testing.T) {
	st, b := &batchStore{Store: openStore(t)}, &fakeBus{}
	c := acceptCore(Options{MaxPendingPerSender: 3}, st, b)
	ms := []Message{msg("urn:sm:user:bob", ""), msg("urn:sm:user:carol", ""), msg("urn:sm:user:dave", ""), msg("urn:sm:user:erin", "")}
	_, err := c.AcceptBatch(t.Context(), ms)
	var ie *ItemError
	if !errors.Is(err, ErrSenderQuota) || errors.As(err, &ie) {
		t.Fatalf("error %v, want sender_quota_exceeded of the whole batch", err)
	}
	if st.calls() != 0 {
		t.Fatal("refused, yet stored")
	}
	if _, err := c.AcceptBatch(t.Context(), ms[:3]); err != nil {
		t.Fatalf("a batch within the quota: %v", err)
	}
}

// A batch sent again with its idempotency keys answers as the first time
// and stores and publishes nothing more; a batch that mixes keys accepted
// before with new messages accepts the new ones only.
func TestAcceptBatchIdempotent(t *testing.T) {
	st, b := &batchStore{Store: openStore(t)}, &fakeBus{}
	c := acceptCore(Options{MaxPendingPerRecipient: 2}, st, b)
	batch := []Message{msg("urn:sm:user:bob", "k1"), msg("urn:sm:user:carol", "k2"), msg("urn:sm:user:bob", "k3")}
	first, err := c.AcceptBatch(t.Context(), batch)
	if err != nil {
		t.Fatal(err)
	}
	// bob's queue is full now: the same batch still answers as before.
	again, err := c.AcceptBatch(t.Context(), batch)
	if err != nil {
		t.Fatalf("the batch again: %v", err)
	}
	if !slices.EqualFunc(first, again, func(a, b Accepted) bool { return a.ID == b.ID && a.CreatedAt.Equal(b.CreatedAt) }) {
		t.Fatalf("the batch again answered %v, want %v", again, first)
	}
	if n := len(b.requeued()); n != 3 || len(pendingOf(t, st, "urn:sm:user:bob")) != 2 || len(pendingOf(t, st, "urn:sm:user:carol")) != 1 {
		t.Fatalf("after the batch again: %d published, want 3 and nothing stored twice", n)
	}
	mixed := []Message{msg("urn:sm:user:carol", "k2"), msg("urn:sm:user:dave", "k4"), msg("urn:sm:user:dave", "")}
	accs, err := c.AcceptBatch(t.Context(), mixed)
	if err != nil {
		t.Fatal(err)
	}
	if accs[0].ID != first[1].ID || accs[1].ID == accs[2].ID {
		t.Fatalf("mixed batch answered %v, want k2's first answer and two new ids", accs)
	}
	if got := pendingOf(t, st, "urn:sm:user:dave"); !slices.Equal(got, []string{accs[1].ID, accs[2].ID}) {
		t.Fatalf("dave pending %v, want the two new messages", got)
	}
	if got := pendingOf(t, st, "urn:sm:user:carol"); len(got) != 1 {
		t.Fatalf("carol pending %v, want her one message, not a second copy", got)
	}
}

// A batch whose commit fails answers unavailable with no index, accepts
// nothing and releases its keys: the same batch sent again is accepted
// as new messages.
func TestAcceptBatchStoreDown(t *testing.T) {
	st, b := &batchStore{Store: openStore(t), putErr: errors.New("disk on fire")}, &fakeBus{}
	c := acceptCore(Options{}, st, b)
	batch := []Message{msg("urn:sm:user:bob", "k1"), msg("urn:sm:user:carol", "k2")}
	_, err := c.AcceptBatch(t.Context(), batch)
	var ie *ItemError
	if !errors.Is(err, ErrUnavailable) || errors.As(err, &ie) {
		t.Fatalf("error %v, want unavailable of the whole batch", err)
	}
	if len(b.requeued()) != 0 {
		t.Fatal("refused, yet published")
	}
	st.mu.Lock()
	st.putErr = nil
	st.mu.Unlock()
	accs, err := c.AcceptBatch(t.Context(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if got := pendingOf(t, st, "urn:sm:user:bob"); !slices.Equal(got, []string{accs[0].ID}) {
		t.Fatalf("bob pending %v, want %s", got, accs[0].ID)
	}
}
