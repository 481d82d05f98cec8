package route

import (
	"context"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// With MarkDelay, a batch's routed marks are written once they are that
// old, not with the batch; those still held when the writer stops are
// written then.
func TestRoutedMarksAreDeferred(t *testing.T) {
	st := &countingStore{}
	p := New(Options{Instance: "self", Notifier: &fakeNotifier{}, HandlerTimeout: time.Second, MarkDelay: 200 * time.Millisecond},
		st, presenceByUser{}, &fakeBus{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.writeMarksUntil(ctx) }()

	first := message(t, "urn:sm:user:b")
	first.Attributes = map[string]string{bus.AttrStored: "1"}
	handled := time.Now()
	if err := handle(p, first); err != nil {
		t.Fatal(err)
	}
	if st.isRouted(first.ID) {
		t.Fatal("marked with its batch")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !st.isRouted(first.ID) {
		if time.Now().After(deadline) {
			t.Fatal("never marked")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if waited := time.Since(handled); waited < 200*time.Millisecond {
		t.Fatalf("marked %v after its batch, before the delay", waited)
	}

	second := message(t, "urn:sm:user:c")
	second.Attributes = map[string]string{bus.AttrStored: "1"}
	if err := handle(p, second); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	if !st.isRouted(second.ID) {
		t.Fatal("a mark held when the writer stopped was not written")
	}
}

// Past maxDeferredMarks, a batch's marks are written with it.
func TestDeferredMarksBounded(t *testing.T) {
	var d deferredMarks
	if !d.add(time.Now(), make([]string, maxDeferredMarks)) {
		t.Fatal("refused up to the bound")
	}
	if d.add(time.Now(), []string{"one more"}) {
		t.Fatal("held more than the bound")
	}
	if got := len(d.due(time.Time{})); got != maxDeferredMarks {
		t.Fatalf("due %d, want %d", got, maxDeferredMarks)
	}
	if !d.add(time.Now(), []string{"again"}) {
		t.Fatal("refused once emptied")
	}
}
