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
