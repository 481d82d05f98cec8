package storetest

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// sized is an envelope from alice to bob with a payload of n bytes.
func sized(n int) *envelope.Envelope {
	return newEnv(alice, bob, base, string(bytes.Repeat([]byte{'p'}, n)))
}

// payloadBytes is the sum of envs' payload lengths.
func payloadBytes(envs []*envelope.Envelope) int {
	n := 0
	for _, e := range envs {
		n += len(e.Payload)
	}
	return n
}

// pagesWithin lists bob's queue with PendingWithin(limit, maxBytes), page
// by page, checking each page's bounds, and returns the pages.
func pagesWithin(t *testing.T, s store.Store, limit, maxBytes int) [][]*envelope.Envelope {
	t.Helper()
	var pages [][]*envelope.Envelope
	cursor := ""
	for range 1000 {
		p, err := s.PendingWithin(t.Context(), bob, cursor, limit, maxBytes)
		if err != nil {
			t.Fatalf("PendingWithin(%q, %d, %d): %v", cursor, limit, maxBytes, err)
		}
		if len(p.Envelopes) > limit {
			t.Fatalf("PendingWithin(limit %d) returned %d envelopes", limit, len(p.Envelopes))
		}
		if maxBytes > 0 && len(p.Envelopes) > 1 && payloadBytes(p.Envelopes) > maxBytes {
			t.Fatalf("PendingWithin(max %d bytes) returned %d envelopes of %d bytes", maxBytes, len(p.Envelopes), payloadBytes(p.Envelopes))
		}
		if p.Next != "" && len(p.Envelopes) == 0 {
			t.Fatalf("PendingWithin returned an empty page with cursor %q", p.Next)
		}
		pages = append(pages, p.Envelopes)
		if p.Next == "" {
			return pages
		}
		cursor = p.Next
	}
	t.Fatal("PendingWithin never exhausted the queue")
	return nil
}

func pageSizes(pages [][]*envelope.Envelope) []int {
	out := make([]int, len(pages))
	for i, p := range pages {
		out[i] = len(p)
	}
	return out
}

// A page bounded by bytes ends before the envelope that would take it past
// the bound, with a cursor that goes on from that envelope: paging through
// the queue returns every envelope once, in store order, whatever the
// bound; a page at the bound exactly keeps its last envelope; an envelope
// larger than the bound comes alone; the count limit still holds.
func testPendingWithinBytes(t *testing.T, s store.Store) {
	sizes := []int{600, 400, 1000, 1, 999, 2500, 10, 10, 10, 300}
	var envs []*envelope.Envelope
	for _, n := range sizes {
		envs = append(envs, sized(n))
	}
	put(t, s, envs...)
	want := idsOf(envs)
	for _, tc := range []struct {
		limit, maxBytes int
		sizes           []int
	}{
		{500, 1000, []int{2, 1, 2, 1, 4}},  // 600+400 | 1000 | 1+999 | 2500 alone | 10+10+10+300
		{500, 1001, []int{2, 2, 1, 1, 4}},  // 600+400 | 1000+1 | 999 | 2500 | 10+10+10+300
		{2, 1000, []int{2, 1, 2, 1, 2, 2}}, // the count limit cuts the last pages
		{500, 1, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{500, 0, []int{10}}, // no byte bound
		{500, 100000, []int{10}},
	} {
		pages := pagesWithin(t, s, tc.limit, tc.maxBytes)
		var got []string
		for _, p := range pages {
			got = append(got, idsOf(p)...)
		}
		if !slices.Equal(got, want) {
			t.Errorf("limit %d, %d bytes: listing %v, want %v (none skipped or repeated)", tc.limit, tc.maxBytes, got, want)
		}
		if tc.sizes != nil && !slices.Equal(pageSizes(pages), tc.sizes) {
			t.Errorf("limit %d, %d bytes: page sizes %v, want %v", tc.limit, tc.maxBytes, pageSizes(pages), tc.sizes)
		}
	}
	// Pages carry their envelopes whole.
	p, err := s.PendingWithin(t.Context(), bob, "", 500, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range p.Envelopes {
		if d := sameEnvelope(e, envs[i]); d != "" {
			t.Errorf("envelope %d of a bounded page: %s", i, d)
		}
	}
	// A cursor from a bounded page works with Pending too, and back.
	q, err := s.Pending(t.Context(), bob, p.Next, 1)
	if err != nil || len(q.Envelopes) != 1 || q.Envelopes[0].ID != envs[2].ID {
		t.Fatalf("Pending after a bounded page: %v, %v; want %s", idsOf(q.Envelopes), err, envs[2].ID)
	}
	r, err := s.PendingWithin(t.Context(), bob, q.Next, 500, 1000)
	if err != nil || !slices.Equal(idsOf(r.Envelopes), idsOf(envs[3:5])) {
		t.Fatalf("PendingWithin after Pending: %v, %v; want %v", idsOf(r.Envelopes), err, idsOf(envs[3:5]))
	}
	// Acknowledged envelopes drop out of the bound as they drop out of the page.
	ack(t, s, bob, envs[0].ID)
	p, err = s.PendingWithin(t.Context(), bob, "", 500, 1400)
	if err != nil || !slices.Equal(idsOf(p.Envelopes), idsOf(envs[1:3])) {
		t.Fatalf("PendingWithin after an ack: %v, %v; want %v", idsOf(p.Envelopes), err, idsOf(envs[1:3]))
	}
	// An empty queue: an empty page and no cursor.
	p, err = s.PendingWithin(t.Context(), carol, "", 10, 10)
	if err != nil || len(p.Envelopes) != 0 || p.Next != "" {
		t.Errorf("empty queue: %d envelopes, next %q, %v", len(p.Envelopes), p.Next, err)
	}
	if _, err := s.PendingWithin(t.Context(), bob, "garbage", 10, 10); err == nil {
		t.Error("PendingWithin with a bad cursor succeeded")
	}
}

func sc(messages int, bytes int64) store.SenderCount {
	return store.SenderCount{Messages: messages, Bytes: bytes}
}

// senderPending checks SenderPending of each sender in want.
func senderPending(t *testing.T, s store.Store, when string, want map[string]store.SenderCount) {
	t.Helper()
	for sender, w := range want {
		c, err := s.SenderPending(t.Context(), sender)
		if err != nil || c != w {
			t.Fatalf("%s: SenderPending(%s) = %+v, %v; want %+v", when, sender, c, err, w)
		}
	}
}

// SenderPending follows every way envelopes are stored and deleted, like
// PendingCount: puts (a duplicate or acknowledged id counts nothing), acks,
// retention, and concurrent batches of these; it counts messages and
// payload bytes, per sender, whatever the recipients.
func testSenderPending(t *testing.T, s store.Store) {
	senderPending(t, s, "empty", map[string]store.SenderCount{alice: {}, carol: {}})
	a1 := newEnv(alice, bob, base.Add(-48*time.Hour), "12345")
	a2 := newEnv(alice, carol, base, "1234567890")
	a3 := newEnv(alice, "urn:x:y:random1", base, "123")
	c1 := newEnv(carol, bob, base, "1")
	put(t, s, a1, a2, c1)
	put(t, s, a3)
	put(t, s, a2, a3) // duplicates
	senderPending(t, s, "after puts", map[string]store.SenderCount{alice: sc(3, 18), carol: sc(1, 1), bob: {}})

	if n := ack(t, s, bob, a2.ID); n != 0 { // carol's, not bob's
		t.Fatalf("bob acked carol's envelope: %d", n)
	}
	if n := ack(t, s, carol, a2.ID); n != 1 {
		t.Fatalf("ack: %d, want 1", n)
	}
	senderPending(t, s, "after an ack", map[string]store.SenderCount{alice: sc(2, 8), carol: sc(1, 1)})
	if acked := putAcked(t, s, a2); !acked[0] {
		t.Fatal("an acknowledged id was stored again")
	}
	senderPending(t, s, "after putting an acked id", map[string]store.SenderCount{alice: sc(2, 8)})

	if n, err := s.DeleteBefore(t.Context(), base.Add(-time.Hour)); err != nil || n != 1 {
		t.Fatalf("DeleteBefore: %d, %v; want 1", n, err)
	}
	senderPending(t, s, "after retention", map[string]store.SenderCount{alice: sc(1, 3), carol: sc(1, 1)})

	// Concurrent puts to many recipients, and acks, grouped into shared
	// commits.
	var wg sync.WaitGroup
	envs := make([]*envelope.Envelope, 40)
	for i := range envs {
		envs[i] = newEnv(carol, fmt.Sprintf("urn:x:y:r%d", i), base, fmt.Sprintf("%04d", i))
	}
	for i := range envs {
		wg.Go(func() { put(t, s, envs[i]) })
	}
	wg.Wait()
	senderPending(t, s, "after concurrent puts", map[string]store.SenderCount{carol: sc(41, 161), alice: sc(1, 3)})
	for i := range 20 {
		wg.Go(func() { ack(t, s, envs[i].Recipient, envs[i].ID) })
	}
	wg.Wait()
	senderPending(t, s, "after concurrent acks", map[string]store.SenderCount{carol: sc(21, 81), alice: sc(1, 3)})
}

// RunSenderCountRowsTest checks that a sender's count row stays at zero
// when its last message is acked, and that the sweep
// (DeleteTombstonesBefore) deletes it; the counts read the same either
// way, and a send after the sweep counts again. rows returns how many
// sender count rows the engine holds.
func RunSenderCountRowsTest(t *testing.T, s store.Store, rows func() int) {
	t.Helper()
	ctx := t.Context()
	const sender, recipient = "urn:sm:user:a", "urn:sm:user:b"
	put := func() string {
		now := envelope.Now()
		env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: sender, Recipient: recipient, Payload: []byte("xy"), CreatedAt: now}
		if _, err := s.PutMessages(ctx, []*envelope.Envelope{env}); err != nil {
			t.Fatal(err)
		}
		return env.ID
	}
	count := func() store.SenderCount {
		c, err := s.SenderPending(ctx, sender)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	id := put()
	if _, err := s.Ack(ctx, recipient, []string{id}); err != nil {
		t.Fatal(err)
	}
	if c := count(); c != (store.SenderCount{}) || rows() != 1 {
		t.Fatalf("after the last ack: count %+v, %d rows; want zero and the row kept", c, rows())
	}
	if _, err := s.DeleteTombstonesBefore(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if c := count(); c != (store.SenderCount{}) || rows() != 0 {
		t.Fatalf("after the sweep: count %+v, %d rows; want zero and no row", c, rows())
	}
	put()
	if c := count(); c != (store.SenderCount{Messages: 1, Bytes: 2}) {
		t.Fatalf("after a send: count %+v, want 1 message of 2 bytes", c)
	}
}
