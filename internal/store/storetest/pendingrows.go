package storetest

import (
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// RunPendingCountRowsTest checks that a recipient's count row stays at
// zero when their last message is acked (no delete and insert per
// message), and that the sweep (DeleteTombstonesBefore) deletes it; the
// counts read the same either way, and a send after the sweep counts
// again. rows returns how many count rows the engine holds.
func RunPendingCountRowsTest(t *testing.T, s store.Store, rows func() int) {
	t.Helper()
	ctx := t.Context()
	const recipient = "urn:sm:user:b"
	put := func() string {
		now := envelope.Now()
		env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:a", Recipient: recipient, Payload: []byte("x"), CreatedAt: now}
		if _, err := s.PutMessages(ctx, []*envelope.Envelope{env}); err != nil {
			t.Fatal(err)
		}
		return env.ID
	}
	count := func() int {
		n, err := s.PendingCount(ctx, recipient)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	id := put()
	if _, err := s.Ack(ctx, recipient, []string{id}); err != nil {
		t.Fatal(err)
	}
	if count() != 0 || rows() != 1 {
		t.Fatalf("after the last ack: count %d, %d rows; want 0 and the row kept", count(), rows())
	}
	if _, err := s.DeleteTombstonesBefore(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if count() != 0 || rows() != 0 {
		t.Fatalf("after the sweep: count %d, %d rows; want 0 and no row", count(), rows())
	}
	put()
	if count() != 1 {
		t.Fatalf("after a send: count %d, want 1", count())
	}
	if total, err := s.PendingTotal(ctx); err != nil || total != 1 {
		t.Fatalf("PendingTotal %d, %v; want 1", total, err)
	}
}
