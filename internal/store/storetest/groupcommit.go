package storetest

import (
	"fmt"
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
// callers of PutMessages queue up, then releases it: every envelope must be
// stored, and the queued calls must share commits.
func RunGroupCommitTest(t *testing.T, s store.Store, p GroupCommitProbe) {
	t.Helper()
	release := p.Hold(t)
	const callers = 32
	ids := envelope.NewIDs()
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Go(func() {
			e := &envelope.Envelope{ID: ids.New(time.Now()), Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b",
				Payload: []byte(fmt.Sprint(i)), CreatedAt: envelope.Now()}
			errs <- s.PutMessages(t.Context(), []*envelope.Envelope{e})
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
		if err != nil {
			t.Fatalf("PutMessages: %v", err)
		}
	}
	page, err := s.Pending(t.Context(), "urn:sm:user:b", "", 500)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Envelopes) != callers {
		t.Fatalf("stored %d envelopes, want %d", len(page.Envelopes), callers)
	}
	if n := p.Commits(); n >= callers {
		t.Errorf("%d %s for %d concurrent calls: no group commit", n, p.Unit, callers)
	} else {
		t.Logf("%d concurrent calls committed in %d %s", callers, n, p.Unit)
	}
}
