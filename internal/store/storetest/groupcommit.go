package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// GroupCommitProbe lets RunGroupCommitTest stall and watch an adapter's
// group-commit writer, through engine-specific means.
type GroupCommitProbe struct {
	// Hold makes the writer's next commit wait (on a lock or a connection)
	// until release is called.
	Hold func(t *testing.T) (release func())
	// Waiting reports whether the writer is waiting on the hold.
	Waiting func(t *testing.T) bool
	// Commits returns how many commits the writer has run so far.
	Commits func() int64
	// Unit names one commit in messages ("statements", "transactions").
	Unit string
}

// RunGroupCommitTest stalls s's writer on its first commit while 32
// callers of PutMessages and 16 of MarkRouted queue up, then releases it:
// the queued calls must share commits, and each must get its own answer:
// half of the puts put a new envelope, which must be stored (not routed),
// and half an envelope acknowledged before, which must be reported
// acknowledged and not stored; each mark marks its two envelopes routed.
func RunGroupCommitTest(t *testing.T, s store.Store, p GroupCommitProbe) {
	t.Helper()
	const (
		callers   = 32
		markers   = 16
		recipient = "urn:sm:user:b"
	)
	ids := envelope.NewIDs()
	envs := make([]*envelope.Envelope, callers)
	for i := range envs {
		envs[i] = &envelope.Envelope{ID: ids.New(time.Now()), Sender: "urn:sm:user:a", Recipient: recipient,
			Payload: []byte(fmt.Sprint(i)), CreatedAt: envelope.Now()}
	}
	// The even callers' envelopes are acknowledged before the stall.
	var ackedIDs []string
	for i := 0; i < callers; i += 2 {
		if _, err := s.PutMessages(t.Context(), envs[i:i+1]); err != nil {
			t.Fatalf("PutMessages: %v", err)
		}
		ackedIDs = append(ackedIDs, envs[i].ID)
	}
	if n, err := s.Ack(t.Context(), recipient, ackedIDs); err != nil || n != len(ackedIDs) {
		t.Fatalf("Ack: %d, %v; want %d", n, err, len(ackedIDs))
	}
	// The markers' envelopes, two each, are stored before the stall.
	toMark := make([]*envelope.Envelope, 2*markers)
	for i := range toMark {
		toMark[i] = &envelope.Envelope{ID: ids.New(time.Now()), Sender: "urn:sm:user:a", Recipient: "urn:sm:user:c",
			Payload: []byte(fmt.Sprint(i)), CreatedAt: envelope.Now()}
	}
	if _, err := s.PutMessages(t.Context(), toMark); err != nil {
		t.Fatalf("PutMessages: %v", err)
	}
	commitsBefore := p.Commits()

	release := p.Hold(t)
	var wg sync.WaitGroup
	errs := make(chan error, callers+markers)
	for i := range markers {
		wg.Go(func() {
			if err := s.MarkRouted(t.Context(), idsOf(toMark[2*i:2*i+2])); err != nil {
				errs <- fmt.Errorf("MarkRouted %d: %w", i, err)
			}
		})
	}
	for i, e := range envs {
		wg.Go(func() {
			acked, err := s.PutMessages(t.Context(), []*envelope.Envelope{e})
			wantAcked := i%2 == 0
			switch {
			case err != nil:
				errs <- err
			case wantAcked && !slices.Equal(acked, []bool{true}):
				errs <- fmt.Errorf("caller %d (acknowledged id): acked %v, want [true]", i, acked)
			case !wantAcked && acked != nil:
				errs <- fmt.Errorf("caller %d (new id): acked %v, want nil", i, acked)
			}
		})
	}
	// Wait until the writer's first commit waits on the hold.
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	deadline := time.After(10 * time.Second)
	for !p.Waiting(t) {
		select {
		case <-poll.C:
		case <-deadline:
			release()
			t.Fatal("the writer never waited on the hold")
		}
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("PutMessages or MarkRouted: %v", err)
	}
	page, err := s.Pending(t.Context(), recipient, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 1; i < callers; i += 2 {
		want = append(want, envs[i].ID)
	}
	got := idsOf(page.Envelopes)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("stored %d envelopes, want the %d new ones", len(got), len(want))
	}
	unrouted, err := s.Unrouted(t.Context(), time.Now().Add(time.Hour), 500)
	if err != nil {
		t.Fatal(err)
	}
	got = idsOf(unrouted)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("%d envelopes unrouted, want the %d new ones (and none of those marked)", len(got), len(want))
	}
	if n := p.Commits() - commitsBefore; n >= callers+markers {
		t.Errorf("%d %s for %d concurrent calls: no group commit", n, p.Unit, callers+markers)
	} else {
		t.Logf("%d concurrent calls committed in %d %s", callers+markers, n, p.Unit)
	}
}

// held is a writer stalled by a GroupCommitProbe's hold, and the callers
// queued behind it.
type held struct {
	t       *testing.T
	p       GroupCommitProbe
	release func()
	readyc  chan struct{}
}

// hold stalls p's writer on its next commit.
func hold(t *testing.T, p GroupCommitProbe) *held {
	return &held{t: t, p: p, release: p.Hold(t), readyc: make(chan struct{}, 256)}
}

// ready is called by a caller just before it calls the store.
func (h *held) ready() { h.readyc <- struct{}{} }

// waitReady waits until n more callers called ready.
func (h *held) waitReady(n int) {
	h.t.Helper()
	deadline := time.After(10 * time.Second)
	for range n {
		select {
		case <-h.readyc:
		case <-deadline:
			h.release()
			h.t.Fatal("the callers never started")
		}
	}
}

// waitWriter waits until the writer's commit waits on the hold.
func (h *held) waitWriter() {
	h.t.Helper()
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	deadline := time.After(10 * time.Second)
	for !h.p.Waiting(h.t) {
		select {
		case <-poll.C:
		case <-deadline:
			h.release()
			h.t.Fatal("the writer never waited on the hold")
		}
	}
}

// RunAckGroupCommitTest stalls s's writer on its first commit while 64
// callers of Ack, each acking its own envelopes, and 8 pairs of callers
// acking the same envelopes queue up, then releases it: the queued acks
// must share commits, and each caller must get its own count. Caller i
// acks its 1+i%5 envelopes, one of them twice, an unknown id and another
// recipient's envelope: it must count 1+i%5. The two callers of a pair
// ack the same 3 envelopes: their counts must add up to 3. Every envelope
// acked must be gone and its id tombstoned; the other recipient's
// envelopes must stay.
func RunAckGroupCommitTest(t *testing.T, s store.Store, p GroupCommitProbe) {
	t.Helper()
	const (
		callers   = 64
		pairs     = 8
		bystander = "urn:sm:user:bystander"
	)
	ids := envelope.NewIDs()
	newEnv := func(recipient string, i int) *envelope.Envelope {
		return &envelope.Envelope{ID: ids.New(time.Now()), Sender: "urn:sm:user:a", Recipient: recipient,
			Payload: []byte(fmt.Sprint(i)), CreatedAt: envelope.Now()}
	}
	own := make([][]*envelope.Envelope, callers)
	shared := make([][]*envelope.Envelope, pairs)
	others := make([]*envelope.Envelope, 4)
	var all []*envelope.Envelope
	for i := range own {
		for j := range 1 + i%5 {
			own[i] = append(own[i], newEnv(fmt.Sprintf("urn:sm:user:own%d", i), j))
		}
		all = append(all, own[i]...)
	}
	for i := range shared {
		for j := range 3 {
			shared[i] = append(shared[i], newEnv(fmt.Sprintf("urn:sm:user:shared%d", i), j))
		}
		all = append(all, shared[i]...)
	}
	for i := range others {
		others[i] = newEnv(bystander, i)
	}
	if _, err := s.PutMessages(t.Context(), append(slices.Clone(all), others...)); err != nil {
		t.Fatalf("PutMessages: %v", err)
	}
	commitsBefore := p.Commits()

	ownCounts := make([]int, callers)
	sharedCounts := make([][2]int, pairs)
	errs := make(chan error, callers+2*pairs)
	var wg sync.WaitGroup
	h := hold(t, p)
	for i, envs := range own {
		wg.Go(func() {
			ack := append(idsOf(envs), "unknown-id", others[i%len(others)].ID, envs[0].ID)
			h.ready()
			n, err := s.Ack(t.Context(), envs[0].Recipient, ack)
			if err != nil {
				errs <- fmt.Errorf("Ack of caller %d: %w", i, err)
			}
			ownCounts[i] = n
		})
	}
	for i, envs := range shared {
		for k := range 2 {
			wg.Go(func() {
				h.ready()
				n, err := s.Ack(t.Context(), envs[0].Recipient, idsOf(envs))
				if err != nil {
					errs <- fmt.Errorf("Ack of pair %d, caller %d: %w", i, k, err)
				}
				sharedCounts[i][k] = n
			})
		}
	}
	h.waitReady(callers + 2*pairs)
	h.waitWriter()
	h.release()
	wg.Wait()
	commits := p.Commits() - commitsBefore
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, n := range ownCounts {
		if want := len(own[i]); n != want {
			t.Errorf("caller %d: Ack counted %d, want %d", i, n, want)
		}
	}
	for i, c := range sharedCounts {
		if c[0]+c[1] != 3 {
			t.Errorf("pair %d: Ack counted %d and %d, want 3 between them", i, c[0], c[1])
		}
	}
	for _, envs := range append(own, shared...) {
		if page, err := s.Pending(t.Context(), envs[0].Recipient, "", 10); err != nil || len(page.Envelopes) != 0 {
			t.Errorf("%s: %d envelopes pending after the acks, %v; want none", envs[0].Recipient, len(page.Envelopes), err)
		}
	}
	page, err := s.Pending(t.Context(), bystander, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := idsOf(page.Envelopes), idsOf(others); !slices.Equal(got, want) {
		t.Errorf("bystander: %d envelopes pending, want %d: acked by someone else", len(got), len(want))
	}
	acked, err := s.PutMessages(t.Context(), all)
	if err != nil {
		t.Fatal(err)
	}
	if n := countTrue(acked); n != len(all) {
		t.Errorf("put again after the acks: %d of %d reported acknowledged, want all (tombstones)", n, len(all))
	}
	// The first ack's commit waits on the hold; the others queue behind it
	// and share a commit or two once it is released.
	switch calls := int64(callers + 2*pairs); {
	case commits == 0:
		t.Errorf("no %s of the writer for %d Ack calls: the acks bypass the group-commit writer", p.Unit, calls)
	case commits > calls/8:
		t.Errorf("%d %s for %d concurrent Ack calls: no group commit", commits, p.Unit, calls)
	default:
		t.Logf("%d concurrent Ack calls committed in %d %s", calls, commits, p.Unit)
	}
}

// RunGroupCommitFallbackTest checks that a request that fails a combined
// commit fails alone: s's writer is stalled on an Ack while a PutMessages
// of bad (an envelope that the engine refuses) and 8 Ack calls queue up
// behind it; once released they form one batch, whose commit fails, and
// each request is retried alone: every ack must succeed with its count,
// and only the put fail.
func RunGroupCommitFallbackTest(t *testing.T, s store.Store, p GroupCommitProbe, bad *envelope.Envelope) {
	t.Helper()
	const callers = 8
	ids := envelope.NewIDs()
	envs := make([]*envelope.Envelope, callers+1)
	for i := range envs {
		envs[i] = &envelope.Envelope{ID: ids.New(time.Now()), Sender: "urn:sm:user:a", Recipient: fmt.Sprintf("urn:sm:user:fb%d", i),
			Payload: []byte(fmt.Sprint(i)), CreatedAt: envelope.Now()}
	}
	if _, err := s.PutMessages(t.Context(), envs); err != nil {
		t.Fatalf("PutMessages: %v", err)
	}
	commitsBefore := p.Commits()
	errs := make(chan error, callers+2)
	var wg sync.WaitGroup
	h := hold(t, p)
	ack := func(e *envelope.Envelope) {
		h.ready()
		n, err := s.Ack(t.Context(), e.Recipient, []string{e.ID, "unknown-id"})
		if err == nil && n != 1 {
			err = fmt.Errorf("counted %d, want 1", n)
		}
		if err != nil {
			errs <- fmt.Errorf("Ack of %s: %w", e.Recipient, err)
		}
	}
	wg.Go(func() { ack(envs[callers]) })
	h.waitReady(1)
	h.waitWriter()
	for _, e := range envs[:callers] {
		wg.Go(func() { ack(e) })
	}
	wg.Go(func() {
		h.ready()
		if _, err := s.PutMessages(t.Context(), []*envelope.Envelope{bad}); err == nil {
			errs <- errors.New("PutMessages of the bad envelope succeeded")
		}
	})
	h.waitReady(callers + 1)
	h.release()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, e := range envs {
		if page, err := s.Pending(t.Context(), e.Recipient, "", 10); err != nil || len(page.Envelopes) != 0 {
			t.Errorf("%s: %d envelopes pending after the ack, %v; want none", e.Recipient, len(page.Envelopes), err)
		}
	}
	// The held commit, the combined one that failed, then each of the
	// callers+1 requests alone.
	if n, want := p.Commits()-commitsBefore, int64(callers+3); n < want {
		t.Errorf("%d %s, want at least %d: the combined batch did not fail, the test proves nothing", n, p.Unit, want)
	}
}
