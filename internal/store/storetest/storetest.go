// Package storetest is the conformance suite for store.Store adapters.
//
// Every adapter runs RunConformanceTests from its own tests, so a new engine
// proves itself by passing the same checks as the existing ones.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// RunConformanceTests runs the suite against the adapter made by newStore.
//
// newStore must return a fresh store that shares no data with any other
// store it returned, and register with t.Cleanup whatever it needs to
// release the store's backing resources (files, schemas). The suite closes
// every store it gets (with t.Cleanup too, so before the adapter's own
// cleanups run); Close must therefore be safe to call more than once.
// Subtests run in parallel.
func RunConformanceTests(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"EnvelopeRoundTrip", testEnvelopeRoundTrip},
		{"PutEmpty", testPutEmpty},
		{"PutIdempotentOnID", testPutIdempotentOnID},
		{"DuplicateNotYetAckedStoredOnce", testDuplicateNotYetAckedStoredOnce},
		{"AckedIDNotStoredAgain", testAckedIDNotStoredAgain},
		{"AckedIDNotStoredAgainRacingAck", testAckedIDRacingAck},
		{"AckPutInterleaved", testAckPutInterleaved},
		{"TombstonesSwept", testTombstonesSwept},
		{"PendingStoreOrder", testPendingStoreOrder},
		{"PendingPaging", testPendingPaging},
		{"PendingLargePages", testPendingLargePages},
		{"PendingWithinBytes", testPendingWithinBytes},
		{"PendingCursorSurvivesAck", testPendingCursorSurvivesAck},
		{"PendingIsolation", testPendingIsolation},
		{"PendingBadCursor", testPendingBadCursor},
		{"Ack", testAck},
		{"DeleteBefore", testDeleteBefore},
		{"Stored", testStored},
		{"PendingCount", testPendingCount},
		{"SenderPending", testSenderPending},
		{"UnroutedRoundTrip", testUnroutedRoundTrip},
		{"MarkRouted", testMarkRouted},
		{"UnroutedBefore", testUnroutedBefore},
		{"UnroutedLimit", testUnroutedLimit},
		{"MarkRoutedUnknownOrAcked", testMarkRoutedUnknownOrAcked},
		{"AckedNeverUnrouted", testAckedNeverUnrouted},
		{"PutKeepsRoutedMark", testPutKeepsRoutedMark},
		{"MarkRoutedLarge", testMarkRoutedLarge},
		{"ConcurrentMarkRouted", testConcurrentMarkRouted},
		{"Idempotency", testIdempotency},
		{"IdempotencyScopedToSender", testIdempotencyScopedToSender},
		{"IdempotencyDeleteBefore", testIdempotencyDeleteBefore},
		{"ReserveConcurrent", testReserveConcurrent},
		{"Targets", testTargets},
		{"TargetsCap", testTargetsCap},
		{"TargetsIsolation", testTargetsIsolation},
		{"ConcurrentPut", testConcurrentPut},
		{"PutNewStores", testPutNewStores},
		{"LeaseHeldAlone", testLeaseHeldAlone},
		{"PutNewAckLeavesNoTombstone", testPutNewAckLeavesNoTombstone},
		{"PutNewClaim", testPutNewClaim},
		{"PutNewClaimRace", testPutNewClaimRace},
		{"PutNewCheckTombstone", testPutNewCheckTombstone},
		{"PutNewConcurrentCounts", testPutNewConcurrentCounts},
		{"Ping", testPing},
		{"Close", testClose},
		{"CloseWithWritesInFlight", testCloseWithWritesInFlight},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

const (
	alice = "urn:sm:user:alice"
	bob   = "urn:sm:user:bob"
	carol = "urn:sm:user:carol"
)

var ids = envelope.NewIDs()

// base is a fixed acceptance time (UTC, whole milliseconds) that tests move
// from, so that retention cut-offs are exact.
var base = time.Date(2026, 11, 27, 10, 0, 0, 123_000_000, time.UTC)

func newEnv(sender, recipient string, at time.Time, payload string) *envelope.Envelope {
	return &envelope.Envelope{
		ID:        ids.New(at),
		Sender:    sender,
		Recipient: recipient,
		Type:      "chat",
		Payload:   []byte(payload),
		CreatedAt: at,
	}
}

// put stores envelopes whose ids were never acknowledged.
func put(t *testing.T, s store.Store, envs ...*envelope.Envelope) {
	t.Helper()
	acked, err := s.PutMessages(t.Context(), envs)
	if err != nil {
		t.Fatalf("PutMessages: %v", err)
	}
	if acked != nil {
		t.Fatalf("PutMessages of ids never acknowledged returned acked %v, want nil", acked)
	}
}

// putAcked stores envs and returns which were reported acknowledged
// before (all false for a nil answer), checking the answer's shape.
func putAcked(t *testing.T, s store.Store, envs ...*envelope.Envelope) []bool {
	t.Helper()
	acked, err := s.PutMessages(t.Context(), envs)
	if err != nil {
		t.Fatalf("PutMessages: %v", err)
	}
	switch {
	case acked == nil:
		return make([]bool, len(envs))
	case len(acked) != len(envs):
		t.Fatalf("PutMessages of %d envelopes returned %d acked flags", len(envs), len(acked))
	case !slices.Contains(acked, true):
		t.Fatalf("PutMessages returned acked %v: want nil when none was acknowledged", acked)
	}
	return acked
}

func ack(t *testing.T, s store.Store, recipient string, ids ...string) int {
	t.Helper()
	n, err := s.Ack(t.Context(), recipient, ids)
	if err != nil {
		t.Fatalf("Ack: %v", err)
	}
	return n
}

// all fetches every pending envelope of recipient, page by page.
func all(t *testing.T, s store.Store, recipient string, limit int) []*envelope.Envelope {
	t.Helper()
	var out []*envelope.Envelope
	cursor := ""
	for i := 0; ; i++ {
		if i > 100000 {
			t.Fatalf("Pending(%s) never exhausted", recipient)
		}
		p, err := s.Pending(t.Context(), recipient, cursor, limit)
		if err != nil {
			t.Fatalf("Pending(%s, %q, %d): %v", recipient, cursor, limit, err)
		}
		if len(p.Envelopes) > limit {
			t.Fatalf("Pending(limit %d) returned %d envelopes", limit, len(p.Envelopes))
		}
		out = append(out, p.Envelopes...)
		if p.Next == "" {
			return out
		}
		if len(p.Envelopes) == 0 {
			t.Fatalf("Pending returned an empty page with cursor %q", p.Next)
		}
		cursor = p.Next
	}
}

func idsOf(envs []*envelope.Envelope) []string {
	out := make([]string, len(envs))
	for i, e := range envs {
		out[i] = e.ID
	}
	return out
}

// sameEnvelope reports how got differs from the stored form of want ("" when
// it does not): every field equal, CreatedAt in UTC truncated to the millisecond.
func sameEnvelope(got, want *envelope.Envelope) string {
	wantAt := want.CreatedAt.UTC().Truncate(time.Millisecond)
	switch {
	case got == nil:
		return "nil envelope"
	case got.ID != want.ID:
		return fmt.Sprintf("id %q, want %q", got.ID, want.ID)
	case got.Sender != want.Sender:
		return fmt.Sprintf("sender %q, want %q", got.Sender, want.Sender)
	case got.Recipient != want.Recipient:
		return fmt.Sprintf("recipient %q, want %q", got.Recipient, want.Recipient)
	case got.Type != want.Type:
		return fmt.Sprintf("type %q, want %q", got.Type, want.Type)
	case !bytes.Equal(got.Payload, want.Payload):
		return fmt.Sprintf("payload %x, want %x", got.Payload, want.Payload)
	case got.Payload == nil:
		// A nil payload would encode as JSON null instead of "".
		return "payload is nil, want a non-nil (possibly empty) slice"
	case got.Ephemeral != want.Ephemeral:
		return fmt.Sprintf("ephemeral %v, want %v", got.Ephemeral, want.Ephemeral)
	case !got.CreatedAt.Equal(wantAt):
		return fmt.Sprintf("created_at %s, want %s", got.CreatedAt.Format(time.RFC3339Nano), wantAt.Format(time.RFC3339Nano))
	case got.CreatedAt.Location() != time.UTC:
		return fmt.Sprintf("created_at in %s, want UTC", got.CreatedAt.Location())
	}
	return ""
}

func testEnvelopeRoundTrip(t *testing.T, s store.Store) {
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	paris := time.FixedZone("CET", 3600)
	cases := []struct {
		name string
		env  *envelope.Envelope
	}{
		{"binary", &envelope.Envelope{Sender: alice, Recipient: bob, Type: "chat", Payload: binary, CreatedAt: base}},
		{"empty payload", &envelope.Envelope{Sender: alice, Recipient: bob, Payload: []byte{}, CreatedAt: base}},
		{"nil payload", &envelope.Envelope{Sender: alice, Recipient: bob, CreatedAt: base}},
		{"ephemeral", &envelope.Envelope{Sender: carol, Recipient: bob, Type: "typing", Payload: []byte("x"), Ephemeral: true, CreatedAt: base}},
		{"long type", &envelope.Envelope{Sender: alice, Recipient: bob, Type: string(bytes.Repeat([]byte("t"), envelope.MaxTypeLen)), Payload: []byte{0}, CreatedAt: base}},
		{"sub-millisecond time in another zone", &envelope.Envelope{Sender: alice, Recipient: bob, Payload: []byte("y"), CreatedAt: base.Add(456789 * time.Nanosecond).In(paris)}},
		{"zero bytes", &envelope.Envelope{Sender: alice, Recipient: bob, Payload: make([]byte, 1024), CreatedAt: base}},
	}
	var envs []*envelope.Envelope
	for _, c := range cases {
		c.env.ID = ids.New(base)
		envs = append(envs, c.env)
	}
	put(t, s, envs...)
	got := all(t, s, bob, 500)
	if len(got) != len(cases) {
		t.Fatalf("Pending returned %d envelopes, want %d", len(got), len(cases))
	}
	for i, c := range cases {
		if d := sameEnvelope(got[i], c.env); d != "" {
			t.Errorf("%s: %s", c.name, d)
		}
	}
}

func testPutEmpty(t *testing.T, s store.Store) {
	if acked, err := s.PutMessages(t.Context(), nil); err != nil || acked != nil {
		t.Fatalf("PutMessages(nil): %v, %v", acked, err)
	}
	if acked, err := s.PutMessages(t.Context(), []*envelope.Envelope{}); err != nil || acked != nil {
		t.Fatalf("PutMessages(empty): %v, %v", acked, err)
	}
	if got := all(t, s, bob, 10); len(got) != 0 {
		t.Fatalf("Pending after empty puts: %d envelopes", len(got))
	}
}

func testPutIdempotentOnID(t *testing.T, s store.Store) {
	first := newEnv(alice, bob, base, "first")
	put(t, s, first)
	put(t, s, first)
	// The same id within one call, and again with other content: the first
	// stored version stays.
	changed := *first
	changed.Payload = []byte("second")
	changed.Type = "other"
	changed.CreatedAt = base.Add(time.Hour)
	other := newEnv(alice, bob, base, "other")
	put(t, s, &changed, other, &changed)

	got := all(t, s, bob, 10)
	if len(got) != 2 {
		t.Fatalf("Pending returned %v, want 2 envelopes", idsOf(got))
	}
	if d := sameEnvelope(got[0], first); d != "" {
		t.Errorf("after re-put: %s", d)
	}
	if d := sameEnvelope(got[1], other); d != "" {
		t.Errorf("second envelope: %s", d)
	}
}

// A duplicate of an envelope still pending (a redelivery before the
// recipient acknowledged it) is stored once and not reported acknowledged,
// whether it comes in another call, in the same call, or in concurrent calls.
func testDuplicateNotYetAckedStoredOnce(t *testing.T, s store.Store) {
	e := newEnv(alice, bob, base, "once")
	put(t, s, e)
	put(t, s, e)
	put(t, s, e, newEnv(alice, carol, base, "other"), e)

	const callers = 8
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			acked, err := s.PutMessages(t.Context(), []*envelope.Envelope{e})
			if err == nil && acked != nil {
				err = fmt.Errorf("acked %v, want nil", acked)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent put of a pending duplicate: %v", err)
		}
	}
	if got := idsOf(all(t, s, bob, 10)); !slices.Equal(got, []string{e.ID}) {
		t.Errorf("bob pending %v, want just %s", got, e.ID)
	}
}

// Once its recipient acknowledged an envelope, a copy put again (a retried
// send, a redelivery) is not stored and is reported acknowledged, alone or
// among new envelopes, and however many times. Acks that deleted nothing
// (another recipient's, unknown ids) leave no tombstone.
func testAckedIDNotStoredAgain(t *testing.T, s store.Store) {
	e1 := newEnv(alice, bob, base, "1")
	e2 := newEnv(alice, bob, base, "2")
	put(t, s, e1, e2)
	if n := ack(t, s, bob, e1.ID); n != 1 {
		t.Fatalf("ack: %d, want 1", n)
	}

	if got := putAcked(t, s, e1); !slices.Equal(got, []bool{true}) {
		t.Errorf("put of an acknowledged id: acked %v, want [true]", got)
	}
	e3 := newEnv(alice, bob, base, "3")
	if got := putAcked(t, s, e3, e1, e2, e1); !slices.Equal(got, []bool{false, true, false, true}) {
		t.Errorf("put of new, acknowledged, pending, acknowledged: acked %v, want [false true false true]", got)
	}
	if got, want := idsOf(all(t, s, bob, 10)), []string{e2.ID, e3.ID}; !slices.Equal(got, want) {
		t.Fatalf("bob pending %v, want %v", got, want)
	}

	// Carol cannot acknowledge Bob's envelope, so that leaves no tombstone.
	if n := ack(t, s, carol, e2.ID); n != 0 {
		t.Fatalf("carol acks bob's: %d, want 0", n)
	}
	if got := putAcked(t, s, e2); !slices.Equal(got, []bool{false}) {
		t.Errorf("put after another user's ack: acked %v, want [false]", got)
	}
	// Nor does an ack of an id never stored: it can be stored later.
	late := newEnv(alice, bob, base, "late")
	if n := ack(t, s, bob, late.ID); n != 0 {
		t.Fatalf("ack of an unknown id: %d, want 0", n)
	}
	put(t, s, late)

	// Acking again, or acking an id already acknowledged, changes nothing.
	if n := ack(t, s, bob, e2.ID, e1.ID, e2.ID); n != 1 {
		t.Fatalf("ack of pending, acknowledged, duplicate: %d, want 1", n)
	}
	if got := putAcked(t, s, e2, e1); !slices.Equal(got, []bool{true, true}) {
		t.Errorf("put after the second ack: acked %v, want [true true]", got)
	}
	if got, want := idsOf(all(t, s, bob, 10)), []string{e3.ID, late.ID}; !slices.Equal(got, want) {
		t.Errorf("bob pending %v, want %v", got, want)
	}

	// A whole page acknowledged at once, then put again in one call larger
	// than any batch.
	many := make([]*envelope.Envelope, 1001)
	for i := range many {
		many[i] = newEnv(alice, carol, base, fmt.Sprint(i))
	}
	put(t, s, many...)
	for start := 0; start < len(many); start += 500 {
		ack(t, s, carol, idsOf(many[start:min(start+500, len(many))])...)
	}
	fresh := newEnv(alice, carol, base, "fresh")
	got := putAcked(t, s, append([]*envelope.Envelope{fresh}, many...)...)
	if got[0] || slices.Contains(got[1:], false) {
		t.Errorf("put of a new and 1001 acknowledged ids: %d acked, want the 1001 after the first", countTrue(got))
	}
	if got := idsOf(all(t, s, carol, 500)); !slices.Equal(got, []string{fresh.ID}) {
		t.Errorf("carol pending %d envelopes, want just the fresh one", len(got))
	}
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// A copy put while its recipient acknowledges the envelope is either
// stored before the ack (which then deletes it) or not stored: once both
// are done the envelope is never pending again.
func testAckedIDRacingAck(t *testing.T, s store.Store) {
	const (
		rounds  = 40
		putters = 4
	)
	for round := range rounds {
		e := newEnv(alice, bob, base, fmt.Sprint(round))
		put(t, s, e)
		var wg sync.WaitGroup
		errs := make(chan error, putters+1)
		start := make(chan struct{})
		for range putters {
			wg.Go(func() {
				<-start
				_, err := s.PutMessages(t.Context(), []*envelope.Envelope{e})
				errs <- err
			})
		}
		wg.Go(func() {
			<-start
			n, err := s.Ack(t.Context(), bob, []string{e.ID})
			if err == nil && n != 1 {
				err = fmt.Errorf("ack deleted %d, want 1", n)
			}
			errs <- err
		})
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if got := all(t, s, bob, 10); len(got) != 0 {
			t.Fatalf("round %d: acknowledged envelope pending again: %v", round, idsOf(got))
		}
		if got := putAcked(t, s, e); !got[0] {
			t.Fatalf("round %d: put after the race not reported acknowledged", round)
		}
	}
}

// Acks and puts of the same ids interleaved across goroutines, as when
// clients acknowledge envelopes while the bus redelivers them. In round i,
// for each recipient at once, two putters put envelope i (with envelope
// i-1, acknowledged in the round before, again) while an acker acks
// envelope i (with envelope i-1 again) until the ack deletes it. An ack
// made after a put of the id returned must delete it, each id is deleted
// once, and once acknowledged no id is stored or pending again.
func testAckPutInterleaved(t *testing.T, s store.Store) {
	const (
		recipients = 8
		rounds     = 12
	)
	envs := make([][]*envelope.Envelope, recipients)
	for r := range envs {
		recipient := fmt.Sprintf("urn:sm:user:interleaved%d", r)
		envs[r] = make([]*envelope.Envelope, rounds)
		for i := range envs[r] {
			envs[r][i] = newEnv(alice, recipient, base, fmt.Sprint(i))
		}
	}
	for i := range rounds {
		var wg sync.WaitGroup
		errs := make(chan error, 3*recipients)
		start := make(chan struct{})
		for r := range envs {
			e := envs[r][i]
			batch := []*envelope.Envelope{e}
			ids := []string{e.ID}
			if i > 0 {
				batch = append(batch, envs[r][i-1])
				ids = append(ids, envs[r][i-1].ID)
			}
			// stored is set once a put returned e stored (or already
			// stored, not acknowledged).
			var stored atomic.Bool
			putter := func() {
				<-start
				acked, err := s.PutMessages(t.Context(), batch)
				switch {
				case err != nil:
					errs <- err
				case i > 0 && (acked == nil || !acked[1]):
					errs <- fmt.Errorf("%s round %d: put of the envelope acknowledged in the round before: acked %v", e.Recipient, i, acked)
				case acked == nil || !acked[0]:
					stored.Store(true)
				}
			}
			acker := func() {
				<-start
				for {
					wasStored := stored.Load()
					n, err := s.Ack(t.Context(), e.Recipient, ids)
					switch {
					case err != nil:
						errs <- err
					case n > 1:
						errs <- fmt.Errorf("%s round %d: ack counted %d, want at most 1", e.Recipient, i, n)
					case n == 0 && wasStored:
						errs <- fmt.Errorf("%s round %d: ack after a put returned the envelope stored deleted nothing", e.Recipient, i)
					case n == 0:
						continue // not stored yet: ack again
					}
					return
				}
			}
			// Goroutines tend to reach the store in the order they start:
			// the acker starts first, second or last, by recipient and round.
			calls := []func(){putter, putter}
			calls = slices.Insert(calls, (r+i)%3, acker)
			for _, call := range calls {
				wg.Go(call)
			}
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	for r := range envs {
		if got := all(t, s, envs[r][0].Recipient, 500); len(got) != 0 {
			t.Errorf("%s: %d acknowledged envelopes pending", envs[r][0].Recipient, len(got))
		}
		if got := putAcked(t, s, envs[r]...); countTrue(got) != rounds {
			t.Errorf("%s: put again after the acks, %d of %d reported acknowledged", envs[r][0].Recipient, countTrue(got), rounds)
		}
	}
}

// DeleteTombstonesBefore forgets acks made before its cut-off (the sweep
// calls it with the idempotency window): an id forgotten is stored again.
func testTombstonesSwept(t *testing.T, s store.Store) {
	ctx := t.Context()
	e1 := newEnv(alice, bob, base, "1")
	e2 := newEnv(alice, carol, base, "2")
	put(t, s, e1, e2)
	before := time.Now()
	ack(t, s, bob, e1.ID)
	ack(t, s, carol, e2.ID)

	// Tombstones of acks made after the cut-off stay.
	n, err := s.DeleteTombstonesBefore(ctx, before.Add(-time.Minute))
	if err != nil || n != 0 {
		t.Fatalf("DeleteTombstonesBefore(before the acks): %d, %v; want 0, nil", n, err)
	}
	if got := putAcked(t, s, e1, e2); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("put after a sweep of nothing: acked %v, want [true true]", got)
	}

	// Older ones go, in any zone; the envelope is then stored again.
	n, err = s.DeleteTombstonesBefore(ctx, time.Now().Add(time.Minute).In(time.FixedZone("X", -7*3600)))
	if err != nil || n != 2 {
		t.Fatalf("DeleteTombstonesBefore(after the acks): %d, %v; want 2, nil", n, err)
	}
	n, err = s.DeleteTombstonesBefore(ctx, time.Now().Add(time.Minute))
	if err != nil || n != 0 {
		t.Errorf("DeleteTombstonesBefore again: %d, %v; want 0, nil", n, err)
	}
	put(t, s, e1)
	if got := idsOf(all(t, s, bob, 10)); !slices.Equal(got, []string{e1.ID}) {
		t.Errorf("bob pending after the sweep and a put: %v, want %s", got, e1.ID)
	}
	// Acknowledged again, it has a tombstone again.
	if n := ack(t, s, bob, e1.ID); n != 1 {
		t.Fatalf("second ack: %d, want 1", n)
	}
	if got := putAcked(t, s, e1); !got[0] {
		t.Errorf("put after the second ack not reported acknowledged")
	}
}

func testPendingStoreOrder(t *testing.T, s store.Store) {
	// Store order, not created_at or id order, decides.
	var want []string
	for i := range 5 {
		e := newEnv(alice, bob, base.Add(-time.Duration(i)*time.Minute), fmt.Sprint(i))
		put(t, s, e)
		want = append(want, e.ID)
	}
	batch := []*envelope.Envelope{
		newEnv(alice, bob, base.Add(time.Hour), "b0"),
		newEnv(alice, bob, base.Add(-time.Hour), "b1"),
		newEnv(alice, bob, base, "b2"),
	}
	put(t, s, batch...)
	want = append(want, idsOf(batch)...)
	if got := idsOf(all(t, s, bob, 100)); !slices.Equal(got, want) {
		t.Fatalf("Pending order\n got %v\nwant %v", got, want)
	}
}

func testPendingPaging(t *testing.T, s store.Store) {
	var want []string
	for i := range 7 {
		e := newEnv(alice, bob, base, fmt.Sprint(i))
		put(t, s, e)
		want = append(want, e.ID)
	}
	for _, limit := range []int{1, 2, 3, 6, 7, 8, 500} {
		if got := idsOf(all(t, s, bob, limit)); !slices.Equal(got, want) {
			t.Errorf("limit %d: got %v, want %v", limit, got, want)
		}
	}
	// A page that takes the last envelopes exactly ends the listing.
	p, err := s.Pending(t.Context(), bob, "", 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Envelopes) != 7 || p.Next != "" {
		t.Errorf("limit 7 of 7: %d envelopes, next %q; want 7 and \"\"", len(p.Envelopes), p.Next)
	}
	p, err = s.Pending(t.Context(), bob, "", 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Envelopes) != 3 || p.Next == "" {
		t.Fatalf("limit 3 of 7: %d envelopes, next %q; want 3 and a cursor", len(p.Envelopes), p.Next)
	}
	// A cursor can be used more than once.
	for range 2 {
		q, err := s.Pending(t.Context(), bob, p.Next, 3)
		if err != nil {
			t.Fatal(err)
		}
		if got := idsOf(q.Envelopes); !slices.Equal(got, want[3:6]) {
			t.Errorf("second page: %v, want %v", got, want[3:6])
		}
	}
	// No messages at all: an empty page and no cursor.
	p, err = s.Pending(t.Context(), carol, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Envelopes) != 0 || p.Next != "" {
		t.Errorf("empty queue: %d envelopes, next %q", len(p.Envelopes), p.Next)
	}
}

func testPendingLargePages(t *testing.T, s store.Store) {
	const n = 1001
	envs := make([]*envelope.Envelope, n)
	for i := range envs {
		envs[i] = newEnv(alice, bob, base, fmt.Sprint(i))
	}
	put(t, s, envs...)
	want := idsOf(envs)
	var got []string
	cursor := ""
	var sizes []int
	for {
		p, err := s.Pending(t.Context(), bob, cursor, 500)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(p.Envelopes))
		got = append(got, idsOf(p.Envelopes)...)
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	if !slices.Equal(sizes, []int{500, 500, 1}) {
		t.Errorf("page sizes %v, want [500 500 1]", sizes)
	}
	if !slices.Equal(got, want) {
		t.Errorf("paged listing differs from store order (%d vs %d ids)", len(got), len(want))
	}
}

func testPendingCursorSurvivesAck(t *testing.T, s store.Store) {
	var envs []*envelope.Envelope
	for i := range 6 {
		envs = append(envs, newEnv(alice, bob, base, fmt.Sprint(i)))
	}
	put(t, s, envs...)
	p, err := s.Pending(t.Context(), bob, "", 2)
	if err != nil {
		t.Fatal(err)
	}
	// The client acknowledges what it got, and the first envelope of the
	// next page, then goes on from its cursor.
	if _, err := s.Ack(t.Context(), bob, append(idsOf(p.Envelopes), envs[2].ID)); err != nil {
		t.Fatal(err)
	}
	q, err := s.Pending(t.Context(), bob, p.Next, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := idsOf(q.Envelopes), idsOf(envs[3:5]); !slices.Equal(got, want) {
		t.Errorf("page after ack: %v, want %v", got, want)
	}
}

func testPendingIsolation(t *testing.T, s store.Store) {
	var toBob, toCarol []string
	for i := range 4 {
		b := newEnv(alice, bob, base, fmt.Sprint(i))
		c := newEnv(alice, carol, base, fmt.Sprint(i))
		put(t, s, b, c)
		toBob = append(toBob, b.ID)
		toCarol = append(toCarol, c.ID)
	}
	if got := idsOf(all(t, s, bob, 3)); !slices.Equal(got, toBob) {
		t.Errorf("bob: %v, want %v", got, toBob)
	}
	if got := idsOf(all(t, s, carol, 3)); !slices.Equal(got, toCarol) {
		t.Errorf("carol: %v, want %v", got, toCarol)
	}
	if got := all(t, s, alice, 3); len(got) != 0 {
		t.Errorf("alice (the sender) has %d pending", len(got))
	}
	// Carol's cursor in Bob's queue gives only Bob's envelopes.
	p, err := s.Pending(t.Context(), carol, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	q, err := s.Pending(t.Context(), bob, p.Next, 100)
	if err != nil && !errors.Is(err, store.ErrBadCursor) {
		t.Fatal(err)
	}
	for _, e := range q.Envelopes {
		if e.Recipient != bob {
			t.Errorf("bob's page holds an envelope for %s", e.Recipient)
		}
	}
}

func testPendingBadCursor(t *testing.T, s store.Store) {
	put(t, s, newEnv(alice, bob, base, "x"))
	for _, c := range []string{"garbage", "!!!", "-1", "%00", " ", "\x00\xff"} {
		_, err := s.Pending(t.Context(), bob, c, 10)
		if !errors.Is(err, store.ErrBadCursor) {
			t.Errorf("Pending(cursor %q): %v, want ErrBadCursor", c, err)
		}
	}
}

func testAck(t *testing.T, s store.Store) {
	b1 := newEnv(alice, bob, base, "1")
	b2 := newEnv(alice, bob, base, "2")
	b3 := newEnv(carol, bob, base, "3")
	c1 := newEnv(alice, carol, base, "4")
	put(t, s, b1, b2, b3, c1)

	// Carol cannot acknowledge Bob's messages; Bob cannot acknowledge Carol's.
	n, err := s.Ack(t.Context(), carol, []string{b1.ID, b2.ID})
	if err != nil || n != 0 {
		t.Errorf("carol acks bob's: %d, %v; want 0, nil", n, err)
	}
	n, err = s.Ack(t.Context(), bob, []string{b1.ID, c1.ID, "unknown-id", b1.ID})
	if err != nil || n != 1 {
		t.Errorf("bob acks own, carol's, unknown, duplicate: %d, %v; want 1, nil", n, err)
	}
	n, err = s.Ack(t.Context(), bob, []string{b1.ID})
	if err != nil || n != 0 {
		t.Errorf("ack again: %d, %v; want 0, nil", n, err)
	}
	n, err = s.Ack(t.Context(), bob, nil)
	if err != nil || n != 0 {
		t.Errorf("ack none: %d, %v; want 0, nil", n, err)
	}
	if got, want := idsOf(all(t, s, bob, 10)), []string{b2.ID, b3.ID}; !slices.Equal(got, want) {
		t.Errorf("bob pending: %v, want %v", got, want)
	}
	if got, want := idsOf(all(t, s, carol, 10)), []string{c1.ID}; !slices.Equal(got, want) {
		t.Errorf("carol pending: %v, want %v", got, want)
	}
	// A whole page of ids at once.
	var many []*envelope.Envelope
	for i := range 500 {
		many = append(many, newEnv(alice, carol, base, fmt.Sprint(i)))
	}
	put(t, s, many...)
	n, err = s.Ack(t.Context(), carol, idsOf(many))
	if err != nil || n != 500 {
		t.Errorf("ack 500: %d, %v; want 500, nil", n, err)
	}
	if got := idsOf(all(t, s, carol, 500)); !slices.Equal(got, []string{c1.ID}) {
		t.Errorf("carol pending after ack of 500: %v", got)
	}
}

func testDeleteBefore(t *testing.T, s store.Store) {
	old1 := newEnv(alice, bob, base.Add(-48*time.Hour), "old1")
	old2 := newEnv(alice, carol, base.Add(-25*time.Hour), "old2")
	edge := newEnv(alice, bob, base.Add(-24*time.Hour), "edge")
	fresh := newEnv(alice, bob, base, "fresh")
	put(t, s, old1, fresh, old2, edge)

	n, err := s.DeleteBefore(t.Context(), base.Add(-24*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("DeleteBefore: %d, %v; want 2, nil", n, err)
	}
	if got, want := idsOf(all(t, s, bob, 10)), []string{fresh.ID, edge.ID}; !slices.Equal(got, want) {
		t.Errorf("bob after retention: %v, want %v", got, want)
	}
	if got := all(t, s, carol, 10); len(got) != 0 {
		t.Errorf("carol after retention: %v", idsOf(got))
	}
	n, err = s.DeleteBefore(t.Context(), base.Add(-24*time.Hour))
	if err != nil || n != 0 {
		t.Errorf("DeleteBefore again: %d, %v; want 0, nil", n, err)
	}
	// A cut-off in another zone means the same instant.
	n, err = s.DeleteBefore(t.Context(), base.Add(time.Millisecond).In(time.FixedZone("X", -7*3600)))
	if err != nil || n != 2 {
		t.Errorf("DeleteBefore(after all): %d, %v; want 2, nil", n, err)
	}
}

// Stored reports the ids still stored, whoever they are for and routed or
// not, and leaves out acknowledged, deleted and unknown ones; it takes
// more ids than one query binds.
func testStored(t *testing.T, s store.Store) {
	stored := func(ids []string) []string {
		t.Helper()
		got, err := s.Stored(t.Context(), ids)
		if err != nil {
			t.Fatalf("Stored(%d ids): %v", len(ids), err)
		}
		slices.Sort(got)
		return got
	}
	if got := stored(nil); len(got) != 0 {
		t.Fatalf("Stored(nil) = %v", got)
	}
	acked := newEnv(alice, bob, base, "acked")
	routed := newEnv(alice, bob, base.Add(time.Millisecond), "routed")
	other := newEnv(alice, carol, base.Add(2*time.Millisecond), "other")
	old := newEnv(alice, bob, base.Add(-48*time.Hour), "old")
	put(t, s, acked, routed, other, old)
	markRouted(t, s, routed.ID)
	ack(t, s, bob, acked.ID)
	if _, err := s.DeleteBefore(t.Context(), base.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	want := []string{routed.ID, other.ID}
	slices.Sort(want)
	if got := stored([]string{acked.ID, routed.ID, "unknown", other.ID, old.ID}); !slices.Equal(got, want) {
		t.Fatalf("Stored = %v, want %v", got, want)
	}
	// Many ids at once, most of them unknown.
	many := make([]string, 0, 1201)
	for i := range 1200 {
		many = append(many, fmt.Sprintf("unknown-%d", i))
	}
	many = append(many, other.ID)
	if got := stored(many); !slices.Equal(got, []string{other.ID}) {
		t.Fatalf("Stored(1201 ids) = %v, want [%s]", got, other.ID)
	}
}

// pendingCounts checks PendingCount of each recipient in want.
func pendingCounts(t *testing.T, s store.Store, when string, want map[string]int) {
	t.Helper()
	for r, w := range want {
		n, err := s.PendingCount(t.Context(), r)
		if err != nil || n != w {
			t.Fatalf("%s: PendingCount(%s) = %d, %v; want %d", when, r, n, err, w)
		}
	}
}

// pendingTotal checks PendingTotal.
func pendingTotal(t *testing.T, s store.Store, when string, want int64) {
	t.Helper()
	if n, err := s.PendingTotal(t.Context()); err != nil || n != want {
		t.Fatalf("%s: PendingTotal = %d, %v; want %d", when, n, err, want)
	}
}

// PendingCount follows every way envelopes are stored and deleted: puts
// (a duplicate or acknowledged id counts nothing), acks (only of the
// recipient's own envelopes), retention, and batches of all of these.
func testPendingCount(t *testing.T, s store.Store) {
	pendingCounts(t, s, "empty", map[string]int{bob: 0, carol: 0})
	b1 := newEnv(alice, bob, base.Add(-48*time.Hour), "b1")
	b2 := newEnv(alice, bob, base, "b2")
	b3 := newEnv(carol, bob, base, "b3")
	c1 := newEnv(alice, carol, base, "c1")
	put(t, s, b1, b2, c1)
	put(t, s, b3)
	put(t, s, b2, b3) // duplicates
	pendingCounts(t, s, "after puts", map[string]int{bob: 3, carol: 1})
	pendingTotal(t, s, "after puts", 4)

	if n := ack(t, s, carol, b1.ID); n != 0 { // not carol's
		t.Fatalf("carol acked bob's envelope: %d", n)
	}
	if n := ack(t, s, bob, b2.ID, b2.ID, "unknown"); n != 1 {
		t.Fatalf("ack: %d, want 1", n)
	}
	pendingCounts(t, s, "after acks", map[string]int{bob: 2, carol: 1})
	if acked := putAcked(t, s, b2); !acked[0] {
		t.Fatal("an acknowledged id was stored again")
	}
	pendingCounts(t, s, "after putting an acked id", map[string]int{bob: 2})

	if n, err := s.DeleteBefore(t.Context(), base.Add(-time.Hour)); err != nil || n != 1 {
		t.Fatalf("DeleteBefore: %d, %v; want 1", n, err)
	}
	pendingCounts(t, s, "after retention", map[string]int{bob: 1, carol: 1})

	// Concurrent puts and acks, grouped into shared commits.
	var wg sync.WaitGroup
	envs := make([]*envelope.Envelope, 40)
	for i := range envs {
		envs[i] = newEnv(alice, carol, base, fmt.Sprint(i))
	}
	for i := range envs {
		wg.Go(func() { put(t, s, envs[i]) })
	}
	wg.Wait()
	pendingCounts(t, s, "after concurrent puts", map[string]int{carol: 41})
	for i := range 20 {
		wg.Go(func() { ack(t, s, carol, envs[i].ID) })
	}
	wg.Wait()
	pendingCounts(t, s, "after concurrent acks", map[string]int{carol: 21, bob: 1})
	pendingTotal(t, s, "after concurrent acks", 22)
	got := all(t, s, carol, 100)
	if len(got) != 21 {
		t.Fatalf("carol has %d pending, the count says 21", len(got))
	}
}

func reservation(sender, key string, at time.Time, payload string) store.Idempotency {
	e := newEnv(sender, bob, at, payload)
	return store.Idempotency{Sender: sender, Key: key, ID: e.ID, CreatedAt: e.CreatedAt, RequestHash: store.EnvelopeHash(e)}
}

// sameRecord reports how got differs from the stored form of want ("" when
// it does not): the answer (id, time in UTC truncated to the millisecond)
// and the request hash.
func sameRecord(got, want store.Idempotency) string {
	wantAt := want.CreatedAt.UTC().Truncate(time.Millisecond)
	switch {
	case got.ID != want.ID:
		return fmt.Sprintf("id %q, want %q", got.ID, want.ID)
	case !got.CreatedAt.Equal(wantAt) || got.CreatedAt.Location() != time.UTC:
		return fmt.Sprintf("created_at %v, want %v (UTC)", got.CreatedAt, wantAt)
	case !bytes.Equal(got.RequestHash, want.RequestHash):
		return fmt.Sprintf("request hash %x, want %x", got.RequestHash, want.RequestHash)
	}
	return ""
}

func testIdempotency(t *testing.T, s store.Store) {
	ctx := t.Context()
	rec := reservation(alice, "k1", base, "first")
	got, ok, err := s.ReserveIdempotency(ctx, rec)
	if err != nil || !ok {
		t.Fatalf("first Reserve: %v, %v; want true, nil", ok, err)
	}
	if got.ID != rec.ID || got.Published {
		t.Errorf("first Reserve returned %+v", got)
	}

	retry := reservation(alice, "k1", base.Add(time.Second), "retry")
	got, ok, err = s.ReserveIdempotency(ctx, retry)
	if err != nil || ok {
		t.Fatalf("second Reserve: %v, %v; want false, nil", ok, err)
	}
	if got.Sender != alice || got.Key != "k1" || got.Published {
		t.Errorf("existing record %+v", got)
	}
	if d := sameRecord(got, rec); d != "" {
		t.Errorf("existing record: %s", d)
	}

	// Released before it was published: the key is free again.
	if err := s.ReleaseIdempotency(ctx, alice, "k1"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	got, ok, err = s.ReserveIdempotency(ctx, retry)
	if err != nil || !ok || got.ID != retry.ID {
		t.Fatalf("Reserve after Release: %v, %v, %v; want the retry recorded", got.ID, ok, err)
	}

	// Published: it stays, and a retry sees it published.
	if err := s.MarkPublished(ctx, alice, "k1"); err != nil {
		t.Fatalf("MarkPublished: %v", err)
	}
	if err := s.MarkPublished(ctx, alice, "k1"); err != nil {
		t.Fatalf("MarkPublished again: %v", err)
	}
	if err := s.ReleaseIdempotency(ctx, alice, "k1"); err != nil {
		t.Fatalf("Release of a published record: %v", err)
	}
	got, ok, err = s.ReserveIdempotency(ctx, reservation(alice, "k1", base, "third"))
	if err != nil || ok {
		t.Fatalf("Reserve after publish: %v, %v; want false, nil", ok, err)
	}
	if !got.Published {
		t.Errorf("record not marked published: %+v", got)
	}
	if d := sameRecord(got, retry); d != "" {
		t.Errorf("published record: %s", d)
	}

	// Unknown keys are no-ops.
	if err := s.ReleaseIdempotency(ctx, alice, "nope"); err != nil {
		t.Errorf("Release unknown: %v", err)
	}

	// The answer's time keeps its milliseconds, and the hash its bytes.
	binRec := store.Idempotency{Sender: carol, Key: "bin", ID: ids.New(base), CreatedAt: base.Add(999 * time.Microsecond),
		RequestHash: store.RequestHash(bob, "t", true, []byte{0, 1, 0xff, 0})}
	if _, ok, err := s.ReserveIdempotency(ctx, binRec); err != nil || !ok {
		t.Fatalf("Reserve bin: %v, %v", ok, err)
	}
	got, ok, err = s.ReserveIdempotency(ctx, reservation(carol, "bin", base, "x"))
	if err != nil || ok {
		t.Fatalf("Reserve bin again: %v, %v", ok, err)
	}
	if d := sameRecord(got, binRec); d != "" {
		t.Errorf("bin record: %s", d)
	}

	// A record without an id or a hash is refused.
	for _, bad := range []store.Idempotency{
		{Sender: carol, Key: "noid", CreatedAt: base, RequestHash: binRec.RequestHash},
		{Sender: carol, Key: "nohash", ID: ids.New(base), CreatedAt: base},
	} {
		if _, _, err := s.ReserveIdempotency(ctx, bad); err == nil {
			t.Errorf("Reserve of %q (no id or no hash) succeeded", bad.Key)
		}
	}
}

func testIdempotencyScopedToSender(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := reservation(alice, "same", base, "a")
	c := reservation(carol, "same", base, "c")
	if _, ok, err := s.ReserveIdempotency(ctx, a); err != nil || !ok {
		t.Fatalf("alice: %v, %v", ok, err)
	}
	if _, ok, err := s.ReserveIdempotency(ctx, c); err != nil || !ok {
		t.Fatalf("carol, same key: %v, %v; want a second record", ok, err)
	}
	if err := s.MarkPublished(ctx, alice, "same"); err != nil {
		t.Fatal(err)
	}
	// Carol's record is neither published by Alice's mark nor kept by it.
	if err := s.ReleaseIdempotency(ctx, carol, "same"); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := s.ReserveIdempotency(ctx, reservation(alice, "same", base, "a2")); err != nil || ok || got.ID != a.ID || !got.Published {
		t.Errorf("alice's record after carol's release: %v, %v, %+v", ok, err, got)
	}
	c2 := reservation(carol, "same", base, "c2")
	if got, ok, err := s.ReserveIdempotency(ctx, c2); err != nil || !ok || got.ID != c2.ID {
		t.Errorf("carol's key after release: %v, %v", ok, err)
	}
}

func testIdempotencyDeleteBefore(t *testing.T, s store.Store) {
	ctx := t.Context()
	old := reservation(alice, "old", base.Add(-25*time.Hour), "o")
	oldPub := reservation(carol, "old", base.Add(-30*time.Hour), "p")
	fresh := reservation(alice, "fresh", base, "f")
	for _, r := range []store.Idempotency{old, oldPub, fresh} {
		if _, ok, err := s.ReserveIdempotency(ctx, r); err != nil || !ok {
			t.Fatalf("Reserve %s/%s: %v, %v", r.Sender, r.Key, ok, err)
		}
	}
	if err := s.MarkPublished(ctx, carol, "old"); err != nil {
		t.Fatal(err)
	}
	n, err := s.DeleteIdempotencyBefore(ctx, base.Add(-24*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("DeleteIdempotencyBefore: %d, %v; want 2, nil", n, err)
	}
	for _, r := range []store.Idempotency{old, oldPub} {
		again := reservation(r.Sender, r.Key, base, "again")
		if got, ok, err := s.ReserveIdempotency(ctx, again); err != nil || !ok || got.ID != again.ID {
			t.Errorf("%s/%s after expiry: %v, %v; want a new record", r.Sender, r.Key, ok, err)
		}
	}
	if _, ok, err := s.ReserveIdempotency(ctx, reservation(alice, "fresh", base, "x")); err != nil || ok {
		t.Errorf("fresh record gone: %v, %v", ok, err)
	}
}

func testReserveConcurrent(t *testing.T, s store.Store) {
	const n = 16
	for round := range 3 {
		key := fmt.Sprintf("race-%d", round)
		var (
			wg      sync.WaitGroup
			winners = make(chan string, n)
			seen    = make(chan string, n)
			errs    = make(chan error, n)
		)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				rec := reservation(alice, key, base, fmt.Sprint(i))
				got, ok, err := s.ReserveIdempotency(t.Context(), rec)
				if err != nil {
					errs <- err
					return
				}
				if ok {
					winners <- rec.ID
				}
				seen <- got.ID
			})
		}
		close(start)
		wg.Wait()
		close(winners)
		close(seen)
		close(errs)
		for err := range errs {
			t.Errorf("concurrent Reserve: %v", err)
		}
		var won []string
		for id := range winners {
			won = append(won, id)
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d winners, want exactly 1", round, len(won))
		}
		for id := range seen {
			if id != won[0] {
				t.Errorf("round %d: a caller saw record %s, the winner recorded %s", round, id, won[0])
			}
		}
	}
}

func sortedTargets(ts []store.Target) []store.Target {
	out := slices.Clone(ts)
	slices.SortFunc(out, func(a, b store.Target) int {
		if c := bytes.Compare([]byte(a.Platform), []byte(b.Platform)); c != 0 {
			return c
		}
		return bytes.Compare([]byte(a.Token), []byte(b.Token))
	})
	return out
}

func targets(t *testing.T, s store.Store, user string) []store.Target {
	t.Helper()
	ts, err := s.Targets(t.Context(), user)
	if err != nil {
		t.Fatalf("Targets(%s): %v", user, err)
	}
	return sortedTargets(ts)
}

func testTargets(t *testing.T, s store.Store) {
	ctx := t.Context()
	if got := targets(t, s, bob); len(got) != 0 {
		t.Fatalf("no targets yet: %v", got)
	}
	fcm := store.Target{Platform: "android", Token: "fcm-token-1"}
	ios := store.Target{Platform: "ios", Token: "fcm-token-1"} // same token, another platform
	apns := store.Target{Platform: "apns", Token: "a1b2c3"}
	web := store.Target{Platform: "webpush", Token: "https://push.example/ep/1", P256DH: "BPk", Auth: "au"}
	for _, tg := range []store.Target{fcm, ios, apns, web, fcm, web} {
		if err := s.PutTarget(ctx, bob, tg, 0); err != nil {
			t.Fatalf("PutTarget %+v: %v", tg, err)
		}
	}
	want := sortedTargets([]store.Target{fcm, ios, apns, web})
	if got := targets(t, s, bob); !slices.Equal(got, want) {
		t.Fatalf("targets\n got %+v\nwant %+v", got, want)
	}

	// The same subscription endpoint with new keys replaces the old one.
	web2 := web
	web2.P256DH, web2.Auth = "BNew", "au2"
	if err := s.PutTarget(ctx, bob, web2, 0); err != nil {
		t.Fatal(err)
	}
	want = sortedTargets([]store.Target{fcm, ios, apns, web2})
	if got := targets(t, s, bob); !slices.Equal(got, want) {
		t.Fatalf("after replace\n got %+v\nwant %+v", got, want)
	}

	// Delete matches on platform and token only.
	if err := s.DeleteTarget(ctx, bob, store.Target{Platform: "webpush", Token: web.Token}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTarget(ctx, bob, fcm); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTarget(ctx, bob, store.Target{Platform: "android", Token: "unknown"}); err != nil {
		t.Errorf("delete unknown: %v", err)
	}
	want = sortedTargets([]store.Target{ios, apns})
	if got := targets(t, s, bob); !slices.Equal(got, want) {
		t.Fatalf("after delete\n got %+v\nwant %+v", got, want)
	}
}

func testTargetsCap(t *testing.T, s store.Store) {
	ctx := t.Context()
	tg := func(i int) store.Target { return store.Target{Platform: "android", Token: fmt.Sprintf("tok-%d", i)} }
	for i := range 3 {
		if err := s.PutTarget(ctx, bob, tg(i), 3); err != nil {
			t.Fatalf("PutTarget %d under cap: %v", i, err)
		}
	}
	if err := s.PutTarget(ctx, bob, tg(3), 3); !errors.Is(err, store.ErrTooManyTargets) {
		t.Fatalf("PutTarget over cap: %v, want ErrTooManyTargets", err)
	}
	// Re-registering an existing target at the cap is allowed.
	if err := s.PutTarget(ctx, bob, tg(1), 3); err != nil {
		t.Fatalf("re-put at cap: %v", err)
	}
	if got := targets(t, s, bob); len(got) != 3 {
		t.Fatalf("%d targets, want 3", len(got))
	}
	// The cap is per user, and deleting makes room.
	if err := s.PutTarget(ctx, carol, tg(3), 3); err != nil {
		t.Fatalf("carol under her own cap: %v", err)
	}
	if err := s.DeleteTarget(ctx, bob, tg(0)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTarget(ctx, bob, tg(3), 3); err != nil {
		t.Fatalf("PutTarget after delete: %v", err)
	}
	// max <= 0: no cap.
	for i := range 20 {
		if err := s.PutTarget(ctx, carol, tg(100+i), 0); err != nil {
			t.Fatalf("uncapped put %d: %v", i, err)
		}
	}
	if got := targets(t, s, carol); len(got) != 21 {
		t.Fatalf("carol has %d targets, want 21", len(got))
	}

	// Concurrent puts never exceed the cap.
	const capN = 4
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			errs <- s.PutTarget(ctx, alice, tg(i), capN)
		})
	}
	wg.Wait()
	close(errs)
	okCount := 0
	for err := range errs {
		switch {
		case err == nil:
			okCount++
		case !errors.Is(err, store.ErrTooManyTargets):
			t.Errorf("concurrent PutTarget: %v", err)
		}
	}
	if got := targets(t, s, alice); len(got) != capN || okCount != capN {
		t.Errorf("concurrent puts: %d stored, %d succeeded; want %d", len(got), okCount, capN)
	}
}

func testTargetsIsolation(t *testing.T, s store.Store) {
	ctx := t.Context()
	shared := store.Target{Platform: "apns", Token: "deadbeef"}
	if err := s.PutTarget(ctx, bob, shared, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTarget(ctx, carol, shared, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTarget(ctx, carol, store.Target{Platform: "ios", Token: "c"}, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTarget(ctx, carol, shared); err != nil {
		t.Fatal(err)
	}
	if got := targets(t, s, bob); !slices.Equal(got, []store.Target{shared}) {
		t.Errorf("bob: %+v", got)
	}
	if got := targets(t, s, carol); !slices.Equal(got, []store.Target{{Platform: "ios", Token: "c"}}) {
		t.Errorf("carol: %+v", got)
	}
	if got := targets(t, s, alice); len(got) != 0 {
		t.Errorf("alice: %+v", got)
	}
}

func testConcurrentPut(t *testing.T, s store.Store) {
	const (
		writers = 32
		each    = 25
	)
	recipients := []string{bob, carol}
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	wantIDs := make([][]string, writers)
	start := make(chan struct{})
	for w := range writers {
		envs := make([]*envelope.Envelope, each)
		for i := range envs {
			envs[i] = newEnv(alice, recipients[w%2], base, fmt.Sprintf("%d-%d", w, i))
		}
		wantIDs[w] = idsOf(envs)
		wg.Go(func() {
			<-start
			for _, e := range envs {
				if _, err := s.PutMessages(t.Context(), []*envelope.Envelope{e}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent PutMessages: %v", err)
	}
	stored := map[string][]string{}
	for _, r := range recipients {
		stored[r] = idsOf(all(t, s, r, 500))
	}
	total := len(stored[bob]) + len(stored[carol])
	if total != writers*each {
		t.Fatalf("stored %d envelopes, want %d", total, writers*each)
	}
	// Each writer's envelopes are stored in the order it put them.
	for w := range writers {
		got := stored[recipients[w%2]]
		pos := make([]int, 0, each)
		for _, id := range wantIDs[w] {
			i := slices.Index(got, id)
			if i < 0 {
				t.Fatalf("writer %d: envelope %s missing", w, id)
			}
			pos = append(pos, i)
		}
		if !slices.IsSorted(pos) {
			t.Errorf("writer %d: envelopes stored out of order: %v", w, pos)
		}
	}
}

func testPing(t *testing.T, s store.Store) {
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Ping(ctx); err == nil {
		t.Errorf("Ping with a cancelled context succeeded")
	}
}

func testClose(t *testing.T, s store.Store) {
	put(t, s, newEnv(alice, bob, base, "x"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	ctx := t.Context()
	e := newEnv(alice, bob, base, "y")
	rec := reservation(alice, "k", base, "z")
	tg := store.Target{Platform: "ios", Token: "t"}
	ops := []struct {
		name string
		call func() error
	}{
		{"PutMessages", func() error { _, err := s.PutMessages(ctx, []*envelope.Envelope{e}); return err }},
		{"PutNew", func() error { _, err := s.PutNew(ctx, []store.NewMessage{{Envelope: e}}); return err }},
		{"Pending", func() error { _, err := s.Pending(ctx, bob, "", 10); return err }},
		{"Ack", func() error { _, err := s.Ack(ctx, bob, []string{e.ID}); return err }},
		{"MarkRouted", func() error { return s.MarkRouted(ctx, []string{e.ID}) }},
		{"Unrouted", func() error { _, err := s.Unrouted(ctx, future, 10); return err }},
		{"DeleteBefore", func() error { _, err := s.DeleteBefore(ctx, base); return err }},
		{"DeleteTombstonesBefore", func() error { _, err := s.DeleteTombstonesBefore(ctx, base); return err }},
		{"ReserveIdempotency", func() error { _, _, err := s.ReserveIdempotency(ctx, rec); return err }},
		{"MarkPublished", func() error { return s.MarkPublished(ctx, alice, "k") }},
		{"ReleaseIdempotency", func() error { return s.ReleaseIdempotency(ctx, alice, "k") }},
		{"DeleteIdempotencyBefore", func() error { _, err := s.DeleteIdempotencyBefore(ctx, base); return err }},
		{"PutTarget", func() error { return s.PutTarget(ctx, bob, tg, 0) }},
		{"DeleteTarget", func() error { return s.DeleteTarget(ctx, bob, tg) }},
		{"Targets", func() error { _, err := s.Targets(ctx, bob); return err }},
		{"Ping", func() error { return s.Ping(ctx) }},
	}
	for _, op := range ops {
		if err := op.call(); !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", op.name, err)
		}
	}
}

func testCloseWithWritesInFlight(t *testing.T, s store.Store) {
	const writers = 16
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	started := make(chan struct{}, writers)
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				_, err := s.PutMessages(t.Context(), []*envelope.Envelope{newEnv(alice, bob, base, fmt.Sprintf("%d-%d", w, i))})
				if i == 0 {
					started <- struct{}{}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range writers {
		<-started
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close with writes in flight: %v", err)
	}
	// Every writer stops with ErrClosed: none hangs, none sees another error.
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("PutMessages racing Close: %v, want ErrClosed", err)
		}
	}
}
