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

// putNew stores msgs with PutNew and returns which were stored, checking
// the answer's shape.
func putNew(t *testing.T, s store.Store, msgs ...store.NewMessage) []bool {
	t.Helper()
	stored, err := s.PutNew(t.Context(), msgs)
	if err != nil {
		t.Fatalf("PutNew: %v", err)
	}
	if len(stored) != len(msgs) {
		t.Fatalf("PutNew of %d messages returned %d stored flags", len(msgs), len(stored))
	}
	return stored
}

// fresh wraps envelopes as new messages without a claim.
func fresh(envs ...*envelope.Envelope) []store.NewMessage {
	out := make([]store.NewMessage, len(envs))
	for i, e := range envs {
		out[i] = store.NewMessage{Envelope: e}
	}
	return out
}

// reserveFor reserves the record (e.Sender, key) with e as its answer.
func reserveFor(t *testing.T, s store.Store, e *envelope.Envelope, key string) {
	t.Helper()
	rec := store.Idempotency{Sender: e.Sender, Key: key, ID: e.ID, CreatedAt: e.CreatedAt, RequestHash: store.EnvelopeHash(e)}
	if _, ok, err := s.ReserveIdempotency(t.Context(), rec); err != nil || !ok {
		t.Fatalf("ReserveIdempotency(%s, %s): %v, %v; want a new record", e.Sender, key, ok, err)
	}
}

// published reads whether the record (sender, key) is published, through
// ReserveIdempotency (which finds the record and leaves it as it is).
func published(t *testing.T, s store.Store, sender, key string) bool {
	t.Helper()
	probe := reservation(sender, key, base, "probe")
	got, fresh, err := s.ReserveIdempotency(t.Context(), probe)
	if err != nil {
		t.Fatalf("ReserveIdempotency: %v", err)
	}
	if fresh {
		t.Fatalf("record %s/%s does not exist", sender, key)
	}
	return got.Published
}

// PutNew stores new messages in the order given, not routed, pending for
// their recipients like PutMessages' envelopes, and reports each stored.
func testPutNewStores(t *testing.T, s store.Store) {
	if stored, err := s.PutNew(t.Context(), nil); err != nil || stored != nil {
		t.Fatalf("PutNew(nil): %v, %v; want nil, nil", stored, err)
	}
	if _, err := s.PutNew(t.Context(), []store.NewMessage{{}}); err == nil {
		t.Fatal("PutNew of a message without an envelope succeeded")
	}
	e1 := newEnv(alice, bob, base, "1")
	e2 := newEnv(carol, bob, base.Add(-time.Hour), "2")
	e3 := newEnv(alice, carol, base, "3")
	if got := putNew(t, s, fresh(e1, e2, e3)...); !slices.Equal(got, []bool{true, true, true}) {
		t.Fatalf("PutNew of three new messages: stored %v, want all", got)
	}
	got := all(t, s, bob, 10)
	if len(got) != 2 {
		t.Fatalf("bob pending %v, want 2 envelopes", idsOf(got))
	}
	for i, want := range []*envelope.Envelope{e1, e2} {
		if d := sameEnvelope(got[i], want); d != "" {
			t.Errorf("bob's envelope %d: %s", i, d)
		}
	}
	if got := idsOf(all(t, s, carol, 10)); !slices.Equal(got, []string{e3.ID}) {
		t.Errorf("carol pending %v, want %s", got, e3.ID)
	}
	if got := idsOf(unrouted(t, s, future, 10)); !slices.Equal(got, []string{e1.ID, e2.ID, e3.ID}) {
		t.Errorf("unrouted %v, want the three in store order", got)
	}
	// Idempotent on id: the same envelope again stores nothing more.
	if got := putNew(t, s, fresh(e1)...); !got[0] {
		t.Errorf("PutNew of a stored id: stored %v, want [true]", got)
	}
	// PutNew and PutMessages interleave in the order of the calls.
	e4, e5 := newEnv(alice, bob, base, "4"), newEnv(alice, bob, base, "5")
	put(t, s, e4)
	putNew(t, s, fresh(e5)...)
	if got, want := idsOf(all(t, s, bob, 10)), []string{e1.ID, e2.ID, e4.ID, e5.ID}; !slices.Equal(got, want) {
		t.Errorf("bob pending %v, want %v", got, want)
	}
	pendingCounts(t, s, "after PutNew", map[string]int{bob: 4, carol: 1})
	senderPending(t, s, "after PutNew", map[string]store.SenderCount{alice: sc(4, 4), carol: sc(1, 1)})
}

// An ack of an envelope PutNew stored records no tombstone: a PutMessages
// of its id afterwards stores it again (PutNew's promise is that nothing
// puts a new id again except under a claim), while an ack of an envelope
// PutMessages stored still does. Acks count the same either way.
func testPutNewAckLeavesNoTombstone(t *testing.T, s store.Store) {
	n1, n2 := newEnv(alice, bob, base, "new1"), newEnv(alice, bob, base, "new2")
	p1 := newEnv(alice, bob, base, "put1")
	putNew(t, s, fresh(n1, n2)...)
	put(t, s, p1)
	if n := ack(t, s, bob, n1.ID, p1.ID); n != 2 {
		t.Fatalf("ack of a new message and a put one: %d, want 2", n)
	}
	pendingCounts(t, s, "after the ack", map[string]int{bob: 1})
	if got := putAcked(t, s, n1, p1); !slices.Equal(got, []bool{false, true}) {
		t.Fatalf("PutMessages after the ack: acked %v, want [false true] (a tombstone for the put one only)", got)
	}
	if got, want := idsOf(all(t, s, bob, 10)), []string{n2.ID, n1.ID}; !slices.Equal(got, want) {
		t.Fatalf("bob pending %v, want %v", got, want)
	}
	// The sweep has no tombstone of the new message to delete.
	if n, err := s.DeleteTombstonesBefore(t.Context(), time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("DeleteTombstonesBefore: %d, %v; want 1 (the put one's)", n, err)
	}
	// Stored again by PutMessages, the envelope needs a tombstone at its
	// next ack.
	if n := ack(t, s, bob, n1.ID, n2.ID); n != 2 {
		t.Fatalf("second ack: %d, want 2", n)
	}
	if got := putAcked(t, s, n1, n2); !slices.Equal(got, []bool{true, false}) {
		t.Errorf("PutMessages after the second ack: acked %v, want [true false]", got)
	}
	pendingCounts(t, s, "at the end", map[string]int{bob: 1})
	senderPending(t, s, "at the end", map[string]store.SenderCount{alice: sc(1, 4)})
}

// A new message with a claim is stored only if its put claims the
// idempotency record, and the record is then published by the same put.
// A claim on a published record, on a released one, on none, or on
// another sender's stores nothing; a claim taken once is not taken again.
func testPutNewClaim(t *testing.T, s store.Store) {
	e := newEnv(alice, bob, base, "claimed")
	reserveFor(t, s, e, "k1")
	if published(t, s, alice, "k1") {
		t.Fatal("record published before the put")
	}
	if got := putNew(t, s, store.NewMessage{Envelope: e, Key: "k1"}); !got[0] {
		t.Fatal("PutNew with a claim on a reserved record: not stored")
	}
	if !published(t, s, alice, "k1") {
		t.Fatal("PutNew that took the claim left the record unpublished")
	}
	// Claimed once: another put under it, the same envelope or another,
	// stores nothing.
	other := newEnv(alice, bob, base, "other")
	if got := putNew(t, s, store.NewMessage{Envelope: e, Key: "k1"}, store.NewMessage{Envelope: other, Key: "k1"}); slices.Contains(got, true) {
		t.Fatalf("PutNew under a claim taken before: stored %v, want none", got)
	}

	// Published by MarkPublished (an ephemeral message's record).
	pub := newEnv(alice, bob, base, "published")
	reserveFor(t, s, pub, "k2")
	if err := s.MarkPublished(t.Context(), alice, "k2"); err != nil {
		t.Fatal(err)
	}
	// Released, never reserved, and another sender's record of that key.
	released := newEnv(alice, bob, base, "released")
	reserveFor(t, s, released, "k3")
	if err := s.ReleaseIdempotency(t.Context(), alice, "k3"); err != nil {
		t.Fatal(err)
	}
	none := newEnv(alice, bob, base, "none")
	carols := newEnv(carol, bob, base, "carol's")
	fine := newEnv(alice, carol, base, "fine")
	got := putNew(t, s,
		store.NewMessage{Envelope: pub, Key: "k2"},
		store.NewMessage{Envelope: released, Key: "k3"},
		store.NewMessage{Envelope: none, Key: "never"},
		store.NewMessage{Envelope: carols, Key: "k1"},
		store.NewMessage{Envelope: fine},
	)
	if !slices.Equal(got, []bool{false, false, false, false, true}) {
		t.Fatalf("PutNew of claims on published, released, missing and another sender's records, and one without a claim: stored %v, want only the last", got)
	}
	if got := idsOf(all(t, s, bob, 10)); !slices.Equal(got, []string{e.ID}) {
		t.Errorf("bob pending %v, want just %s", got, e.ID)
	}
	// A released key, reserved again, is claimed again.
	reserveFor(t, s, released, "k3")
	if got := putNew(t, s, store.NewMessage{Envelope: released, Key: "k3"}); !got[0] {
		t.Error("PutNew with a claim on a record reserved again: not stored")
	}
	pendingCounts(t, s, "after the claims", map[string]int{bob: 2, carol: 1})
	senderPending(t, s, "after the claims", map[string]store.SenderCount{alice: sc(3, int64(len("claimed")+len("released")+len("fine"))), carol: sc(0, 0)})
}

// Concurrent PutNew calls claiming one record, each with its own
// envelope, store exactly one of them, and exactly one call reports it
// stored: over many records claimed at once, by pairs and by more.
func testPutNewClaimRace(t *testing.T, s store.Store) {
	RunClaimRaceTest(t, s, s)
}

// RunClaimRaceTest runs rounds of PutNew calls claiming one record at
// once, half of them through a and half through b (two stores on one
// database, as two instances; or one store twice): each round stores
// exactly one envelope under the record, exactly one call reports its
// envelope stored, and the record ends published. Many rounds run at once.
func RunClaimRaceTest(t *testing.T, a, b store.Store) {
	t.Helper()
	const (
		rounds    = 64
		claimants = 2
	)
	recipient := fmt.Sprintf("urn:sm:user:race%d", time.Now().UnixNano())
	type attempt struct {
		env    *envelope.Envelope
		stored bool
		err    error
	}
	attempts := make([][]attempt, rounds)
	for r := range attempts {
		attempts[r] = make([]attempt, claimants+r%3) // pairs, and a few more
		for i := range attempts[r] {
			attempts[r][i].env = newEnv(alice, recipient, base, fmt.Sprintf("%d-%d", r, i))
		}
		reserveFor(t, a, attempts[r][0].env, fmt.Sprintf("race-%s-%d", recipient, r))
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for r := range attempts {
		key := fmt.Sprintf("race-%s-%d", recipient, r)
		for i := range attempts[r] {
			st := a
			if i%2 == 1 {
				st = b
			}
			wg.Go(func() {
				<-start
				got, err := st.PutNew(t.Context(), []store.NewMessage{{Envelope: attempts[r][i].env, Key: key}})
				attempts[r][i].err = err
				if err == nil {
					attempts[r][i].stored = got[0]
				}
			})
		}
	}
	close(start)
	wg.Wait()
	pending := idsOf(all(t, a, recipient, 500))
	winners := map[string]bool{}
	for r := range attempts {
		var won []string
		for _, at := range attempts[r] {
			if at.err != nil {
				t.Fatalf("round %d: PutNew: %v", r, at.err)
			}
			if at.stored {
				won = append(won, at.env.ID)
			}
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d of %d claimants report their envelope stored, want exactly 1", r, len(won), len(attempts[r]))
		}
		winners[won[0]] = true
		n := 0
		for _, at := range attempts[r] {
			if slices.Contains(pending, at.env.ID) {
				n++
			}
		}
		if n != 1 || !slices.Contains(pending, won[0]) {
			t.Fatalf("round %d: %d of its envelopes pending (the winner's: %v), want exactly the winner's", r, n, slices.Contains(pending, won[0]))
		}
		if !published(t, b, alice, fmt.Sprintf("race-%s-%d", recipient, r)) {
			t.Fatalf("round %d: record not published", r)
		}
	}
	if len(pending) != rounds {
		t.Fatalf("%d envelopes pending, want one per round (%d)", len(pending), rounds)
	}
	if n, err := a.PendingCount(t.Context(), recipient); err != nil || n != rounds {
		t.Fatalf("PendingCount %d, %v; want %d", n, err, rounds)
	}
}

// CheckTombstone leaves an id with a tombstone unstored (its claim taken
// all the same): the retry of a send whose first attempt a writer without
// claims stored and its recipient acknowledged. Without a tombstone it
// stores as usual.
func testPutNewCheckTombstone(t *testing.T, s store.Store) {
	e := newEnv(alice, bob, base, "stored by an older writer")
	reserveFor(t, s, e, "k")
	put(t, s, e) // the first attempt: put without claiming the record
	if n := ack(t, s, bob, e.ID); n != 1 {
		t.Fatalf("ack: %d, want 1", n)
	}
	if got := putNew(t, s, store.NewMessage{Envelope: e, Key: "k", CheckTombstone: true}); got[0] {
		t.Fatal("PutNew with CheckTombstone of an acknowledged id: stored")
	}
	if !published(t, s, alice, "k") {
		t.Error("PutNew with CheckTombstone of an acknowledged id left the record unpublished")
	}
	if got := all(t, s, bob, 10); len(got) != 0 {
		t.Fatalf("bob pending %v after the retry, want nothing", idsOf(got))
	}
	// Neither claimed nor acknowledged: stored.
	f := newEnv(alice, bob, base, "fresh")
	reserveFor(t, s, f, "k2")
	g := newEnv(alice, bob, base, "no claim")
	if got := putNew(t, s, store.NewMessage{Envelope: f, Key: "k2", CheckTombstone: true}, store.NewMessage{Envelope: g, CheckTombstone: true}); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("PutNew with CheckTombstone of new ids: stored %v, want both", got)
	}
	if got, want := idsOf(all(t, s, bob, 10)), []string{f.ID, g.ID}; !slices.Equal(got, want) {
		t.Fatalf("bob pending %v, want %v", got, want)
	}
	pendingCounts(t, s, "at the end", map[string]int{bob: 2})
	senderPending(t, s, "at the end", map[string]store.SenderCount{alice: sc(2, int64(len("fresh")+len("no claim")))})
}

// Concurrent PutNew, PutMessages and Ack calls, grouped into shared
// commits, keep the counts right: every new message stored once, every
// ack deleting what it names.
func testPutNewConcurrentCounts(t *testing.T, s store.Store) {
	const n = 48
	envs := make([]*envelope.Envelope, n)
	for i := range envs {
		envs[i] = newEnv(alice, carol, base, fmt.Sprint(i))
		if i%4 == 3 {
			reserveFor(t, s, envs[i], fmt.Sprint("key", i))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i, e := range envs {
		wg.Go(func() {
			var err error
			switch i % 4 {
			case 0:
				_, err = s.PutMessages(t.Context(), []*envelope.Envelope{e})
			case 3:
				var got []bool
				got, err = s.PutNew(t.Context(), []store.NewMessage{{Envelope: e, Key: fmt.Sprint("key", i)}, {Envelope: e, Key: fmt.Sprint("key", i)}})
				if err == nil && !slices.Equal(got, []bool{true, false}) {
					err = fmt.Errorf("claimed twice in one call: stored %v, want [true false]", got)
				}
			default:
				_, err = s.PutNew(t.Context(), fresh(e))
			}
			errs <- err
		})
	}
	wg.Wait()
	pendingCounts(t, s, "after concurrent puts", map[string]int{carol: n})
	senderPending(t, s, "after concurrent puts", map[string]store.SenderCount{alice: sc(n, int64(payloadBytes(envs)))})
	for i := 0; i < n; i += 2 {
		wg.Go(func() {
			got, err := s.Ack(t.Context(), carol, []string{envs[i].ID, envs[i+1].ID})
			if err == nil && got != 2 {
				err = fmt.Errorf("ack deleted %d, want 2", got)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	pendingCounts(t, s, "after concurrent acks", map[string]int{carol: 0})
	pendingTotal(t, s, "after concurrent acks", 0)
	senderPending(t, s, "after concurrent acks", map[string]store.SenderCount{alice: sc(0, 0)})
	// Only PutMessages' envelopes left tombstones.
	acked := putAcked(t, s, envs...)
	for i, a := range acked {
		if a != (i%4 == 0) {
			t.Errorf("envelope %d (put by %s): acked %v after its ack", i, map[bool]string{true: "PutMessages", false: "PutNew"}[i%4 == 0], a)
		}
	}
}
