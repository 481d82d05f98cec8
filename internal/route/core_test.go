package route

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// failingConsumer is a bus whose ingress subscription cannot be opened.
type failingConsumer struct{ fakeBus }

var errSubscribe = errors.New("subscribe: no such stream")

func (*failingConsumer) ReceiveIngressBatch(context.Context, int, bus.BatchHandler) error {
	return errSubscribe
}

// When the ingress consumer fails, Run stops its other loops and returns
// the consumer's error, without its context ending: the instance stops.
func TestRunReturnsTheConsumersFailure(t *testing.T) {
	c := New(Options{Instance: "self", Consume: true, HandoffQueue: 4, MarkDelay: time.Hour, RerouteAfter: time.Hour,
		HandlerTimeout: time.Second}, &fakeStore{}, presenceByUser{}, &failingConsumer{})
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, errSubscribe) {
			t.Fatalf("Run returned %v, want the consumer's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10 s after its consumer failed")
	}
}

// Once its context ends, Run refuses new hand-offs, routes what the
// hand-off holds, and then writes the routed marks it held back, before
// it returns.
func TestRunDrainsTheHandoffThenTheMarks(t *testing.T) {
	st, n := &fakeStore{}, &fakeNotifier{}
	c := New(Options{Instance: "self", Consume: true, Notifier: n, HandoffQueue: 64, MaxBatch: 4, MarkDelay: time.Hour,
		HandlerTimeout: time.Second}, st, presenceByUser{}, &fakeBus{})
	ids := offer(t, c, "urn:sm:user:b", 10)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(n.notifications()); got != len(ids) {
		t.Fatalf("%d of %d handed-off messages routed when Run returned", got, len(ids))
	}
	for _, id := range ids {
		if !st.isRouted(id) {
			t.Fatalf("%s routed but its mark not written when Run returned", id)
		}
	}
	if ev, _ := stored(t, "urn:sm:user:b"); c.offer(ev) {
		t.Fatal("the hand-off took an event after Run returned")
	}
}
