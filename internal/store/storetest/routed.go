package storetest

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// future is a cut-off after every envelope the suite stores.
var future = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

// unrouted calls Unrouted and checks that it kept to limit.
func unrouted(t *testing.T, s store.Store, before time.Time, limit int) []*envelope.Envelope {
	t.Helper()
	got, err := s.Unrouted(t.Context(), before, limit)
	if err != nil {
		t.Fatalf("Unrouted(%s, %d): %v", before.Format(time.RFC3339Nano), limit, err)
	}
	if len(got) > max(limit, 0) {
		t.Fatalf("Unrouted(limit %d) returned %d envelopes", limit, len(got))
	}
	return got
}

func markRouted(t *testing.T, s store.Store, ids ...string) {
	t.Helper()
	if err := s.MarkRouted(t.Context(), ids); err != nil {
		t.Fatalf("MarkRouted(%d ids): %v", len(ids), err)
	}
}

// Stored envelopes are unrouted until marked, and Unrouted returns them
// whole, in store order (not created_at or id order), for every recipient.
func testUnroutedRoundTrip(t *testing.T, s store.Store) {
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(255 - i)
	}
	paris := time.FixedZone("CET", 3600)
	envs := []*envelope.Envelope{
		{Sender: alice, Recipient: bob, Type: "chat", Payload: binary, CreatedAt: base},
		{Sender: alice, Recipient: carol, Payload: []byte{}, CreatedAt: base.Add(-time.Hour)},
		{Sender: carol, Recipient: bob, Type: "typing", Payload: []byte("x"), Ephemeral: true, CreatedAt: base.Add(time.Minute)},
		{Sender: bob, Recipient: alice, CreatedAt: base.Add(-2 * time.Hour)}, // nil payload
		{Sender: alice, Recipient: bob, Payload: []byte("y"), CreatedAt: base.Add(456789 * time.Nanosecond).In(paris)},
	}
	for i, e := range envs {
		// Ids in the reverse of store order.
		e.ID = ids.New(base.Add(time.Duration(len(envs)-i) * time.Hour))
	}
	put(t, s, envs[:2]...)
	put(t, s, envs[2:]...)
	got := unrouted(t, s, future, 100)
	if len(got) != len(envs) {
		t.Fatalf("Unrouted returned %d envelopes, want %d", len(got), len(envs))
	}
	for i, e := range envs {
		if d := sameEnvelope(got[i], e); d != "" {
			t.Errorf("envelope %d: %s", i, d)
		}
	}
}

// MarkRouted takes envelopes out of Unrouted, and only them; they stay
// pending until acknowledged. Marking again, or nothing, is no error.
func testMarkRouted(t *testing.T, s store.Store) {
	envs := make([]*envelope.Envelope, 5)
	for i := range envs {
		envs[i] = newEnv(alice, bob, base, fmt.Sprint(i))
	}
	put(t, s, envs...)
	markRouted(t, s, envs[3].ID, envs[1].ID)
	if got, want := idsOf(unrouted(t, s, future, 10)), idsOf([]*envelope.Envelope{envs[0], envs[2], envs[4]}); !slices.Equal(got, want) {
		t.Fatalf("Unrouted after marking 1 and 3: %v, want %v", got, want)
	}
	markRouted(t, s, envs[1].ID, envs[1].ID, envs[3].ID)
	markRouted(t, s)
	if err := s.MarkRouted(t.Context(), nil); err != nil {
		t.Errorf("MarkRouted(nil): %v", err)
	}
	markRouted(t, s, envs[0].ID, envs[2].ID, envs[4].ID)
	if got := unrouted(t, s, future, 10); len(got) != 0 {
		t.Fatalf("Unrouted after marking all: %v, want none", idsOf(got))
	}
	if got, want := idsOf(all(t, s, bob, 10)), idsOf(envs); !slices.Equal(got, want) {
		t.Errorf("bob pending after the marks: %v, want %v", got, want)
	}
}

// Unrouted returns only envelopes created before its cut-off (in any
// zone, to the nanosecond), oldest stored first.
func testUnroutedBefore(t *testing.T, s store.Store) {
	newer := newEnv(alice, bob, base.Add(time.Hour), "newer")
	edge := newEnv(alice, bob, base, "edge")
	old := newEnv(alice, carol, base.Add(-time.Hour), "old")
	put(t, s, newer, edge, old)
	cases := []struct {
		name   string
		before time.Time
		want   []*envelope.Envelope
	}{
		{"before all", base.Add(-time.Hour), nil},
		{"at edge", base, []*envelope.Envelope{old}},
		{"just after edge", base.Add(time.Nanosecond), []*envelope.Envelope{edge, old}},
		{"a millisecond after edge", base.Add(time.Millisecond), []*envelope.Envelope{edge, old}},
		{"at newer, another zone", base.Add(time.Hour).In(time.FixedZone("X", -7*3600)), []*envelope.Envelope{edge, old}},
		{"after all", base.Add(time.Hour + time.Millisecond), []*envelope.Envelope{newer, edge, old}},
	}
	for _, c := range cases {
		if got, want := idsOf(unrouted(t, s, c.before, 10)), idsOf(c.want); !slices.Equal(got, want) {
			t.Errorf("%s: Unrouted %v, want %v", c.name, got, want)
		}
	}
}

// Unrouted returns at most limit envelopes, the oldest stored; none for a
// limit <= 0.
func testUnroutedLimit(t *testing.T, s store.Store) {
	envs := make([]*envelope.Envelope, 7)
	for i := range envs {
		envs[i] = newEnv(alice, []string{bob, carol}[i%2], base, fmt.Sprint(i))
	}
	put(t, s, envs...)
	want := idsOf(envs)
	for _, limit := range []int{-1, 0, 1, 3, 6, 7, 8, 1000} {
		if got := idsOf(unrouted(t, s, future, limit)); !slices.Equal(got, want[:min(max(limit, 0), len(want))]) {
			t.Errorf("limit %d: %v, want the first %d of %v", limit, got, limit, want)
		}
	}
	// The sweep's loop: a page, marked, then the next page.
	var swept []string
	for range 10 {
		page := idsOf(unrouted(t, s, future, 3))
		if len(page) == 0 {
			break
		}
		swept = append(swept, page...)
		markRouted(t, s, page...)
	}
	if !slices.Equal(swept, want) {
		t.Errorf("paged sweep: %v, want %v", swept, want)
	}
}

// MarkRouted ignores ids not stored: never stored, or acknowledged (and so
// deleted) meanwhile, in calls alone or among stored ids, however many.
func testMarkRoutedUnknownOrAcked(t *testing.T, s store.Store) {
	e1 := newEnv(alice, bob, base, "1")
	e2 := newEnv(alice, bob, base, "2")
	e3 := newEnv(alice, bob, base, "3")
	put(t, s, e1, e2, e3)
	ack(t, s, bob, e1.ID)
	markRouted(t, s, e1.ID)
	markRouted(t, s, "unknown-id")
	markRouted(t, s, e1.ID, "unknown-id", e2.ID, "", e2.ID)
	if got := idsOf(unrouted(t, s, future, 10)); !slices.Equal(got, []string{e3.ID}) {
		t.Errorf("Unrouted: %v, want just %s", got, e3.ID)
	}
	unknown := make([]string, 2500)
	for i := range unknown {
		unknown[i] = ids.New(base)
	}
	markRouted(t, s, unknown...)
	if got := idsOf(unrouted(t, s, future, 10)); !slices.Equal(got, []string{e3.ID}) {
		t.Errorf("Unrouted after marking 2500 unknown ids: %v, want just %s", got, e3.ID)
	}
}

// An acknowledged envelope never shows in Unrouted, routed or not, even
// when a copy is put again; nor does one deleted by retention.
func testAckedNeverUnrouted(t *testing.T, s store.Store) {
	e1 := newEnv(alice, bob, base, "1")
	e2 := newEnv(alice, bob, base, "2")
	old := newEnv(alice, carol, base.Add(-48*time.Hour), "old")
	put(t, s, e1, e2, old)
	markRouted(t, s, e2.ID)
	if n := ack(t, s, bob, e1.ID, e2.ID); n != 2 {
		t.Fatalf("ack: %d, want 2", n)
	}
	if got := idsOf(unrouted(t, s, future, 10)); !slices.Equal(got, []string{old.ID}) {
		t.Fatalf("Unrouted after the acks: %v, want just %s", got, old.ID)
	}
	if got := putAcked(t, s, e1, e2); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("put of acknowledged ids: acked %v, want [true true]", got)
	}
	if got := idsOf(unrouted(t, s, future, 10)); !slices.Equal(got, []string{old.ID}) {
		t.Errorf("Unrouted after putting acknowledged ids again: %v, want just %s", got, old.ID)
	}
	if _, err := s.DeleteBefore(t.Context(), base.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := unrouted(t, s, future, 10); len(got) != 0 {
		t.Errorf("Unrouted after retention: %v, want none", idsOf(got))
	}
}

// A copy of a routed envelope put again (a retried send, a redelivery)
// leaves it routed, alone or among new envelopes.
func testPutKeepsRoutedMark(t *testing.T, s store.Store) {
	e := newEnv(alice, bob, base, "e")
	put(t, s, e)
	markRouted(t, s, e.ID)
	fresh := newEnv(alice, bob, base, "fresh")
	put(t, s, e)
	put(t, s, fresh, e)
	if got := idsOf(unrouted(t, s, future, 10)); !slices.Equal(got, []string{fresh.ID}) {
		t.Errorf("Unrouted: %v, want just the fresh %s", got, fresh.ID)
	}
	if got, want := idsOf(all(t, s, bob, 10)), []string{e.ID, fresh.ID}; !slices.Equal(got, want) {
		t.Errorf("bob pending: %v, want %v", got, want)
	}
}

// One MarkRouted call larger than any batch or statement marks every id.
func testMarkRoutedLarge(t *testing.T, s store.Store) {
	many := make([]*envelope.Envelope, 2001)
	for i := range many {
		many[i] = newEnv(alice, []string{bob, carol}[i%2], base, fmt.Sprint(i))
	}
	put(t, s, many...)
	// Every id but the 1000th, then unknown ones.
	marks := idsOf(slices.Concat(many[:1000], many[1001:]))
	for range 500 {
		marks = append(marks, ids.New(base))
	}
	markRouted(t, s, marks...)
	if got := idsOf(unrouted(t, s, future, 5000)); !slices.Equal(got, []string{many[1000].ID}) {
		t.Errorf("Unrouted: %d envelopes, want just the one not marked", len(got))
	}
}

// Concurrent MarkRouted calls, among concurrent PutMessages calls, each
// mark their own ids and nothing else.
func testConcurrentMarkRouted(t *testing.T, s store.Store) {
	const (
		markers = 8
		batches = 4
		batch   = 32
		putters = 8
		each    = 10
	)
	stored := make([]*envelope.Envelope, markers*batches*batch)
	for i := range stored {
		stored[i] = newEnv(alice, []string{bob, carol}[i%2], base, fmt.Sprint(i))
	}
	put(t, s, stored...)
	// Each marker marks its share but the last id of each batch.
	var want []string
	for i, e := range stored {
		if i%batch == batch-1 {
			want = append(want, e.ID)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, markers*batches+putters*each)
	start := make(chan struct{})
	for m := range markers {
		share := stored[m*batches*batch : (m+1)*batches*batch]
		wg.Go(func() {
			<-start
			for b := range batches {
				if err := s.MarkRouted(t.Context(), idsOf(share[b*batch:(b+1)*batch-1])); err != nil {
					errs <- err
				}
			}
		})
	}
	for p := range putters {
		envs := make([]*envelope.Envelope, each)
		for i := range envs {
			envs[i] = newEnv(carol, bob, base, fmt.Sprintf("p%d-%d", p, i))
		}
		want = append(want, idsOf(envs)...)
		wg.Go(func() {
			<-start
			for _, e := range envs {
				if _, err := s.PutMessages(t.Context(), []*envelope.Envelope{e}); err != nil {
					errs <- err
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent MarkRouted and PutMessages: %v", err)
	}
	got := idsOf(unrouted(t, s, future, 1000))
	// The marked ids stored first come first; the concurrent puts after.
	if n := markers * batches; len(got) < n || !slices.Equal(got[:n], want[:n]) {
		t.Errorf("Unrouted does not start with the %d ids left unmarked, in store order", n)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Unrouted: %d envelopes, want the %d left unmarked or put meanwhile", len(got), len(want))
	}
}
