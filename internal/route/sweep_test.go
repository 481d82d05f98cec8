package route

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// The sweep routes messages stored long enough ago whose routing event
// never came (a push for an offline recipient, live for an online one),
// marks them routed, and leaves recent ones to their routing event.
func TestSweepRoutesUnroutedMessages(t *testing.T) {
	old := time.Now().Add(-time.Minute)
	mk := func(id, to string, at time.Time) *envelope.Envelope {
		return &envelope.Envelope{ID: id, Sender: "urn:sm:user:a", Recipient: to, Payload: []byte("c"), CreatedAt: at}
	}
	st := &fakeStore{envs: []*envelope.Envelope{
		mk("lost-offline", "urn:sm:user:off", old),
		mk("lost-online", "urn:sm:user:on", old),
		mk("recent", "urn:sm:user:off", time.Now()),
	}}
	n, b := &fakeNotifier{}, &fakeBus{}
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second}, st, presenceByUser{"urn:sm:user:on": {"other"}}, b)
	if got := p.sweepOnce(context.Background(), 30*time.Second, time.Time{}, nil); got != 2 {
		t.Fatalf("first sweep found %d, want 2", got)
	}
	if !st.isRouted("lost-offline") || !st.isRouted("lost-online") || st.isRouted("recent") {
		t.Fatalf("routed marks %v", st.routed)
	}
	if len(n.got) != 1 || n.got[0].MessageID != "lost-offline" {
		t.Fatalf("pushes %+v, want one for lost-offline", n.got)
	}
	if len(b.out) != 1 || b.out[0].instance != "other" || b.out[0].m.ID != "lost-online.other" {
		t.Fatalf("deliveries %+v, want one for lost-online to other", b.out)
	}
	if got := p.sweepOnce(context.Background(), 30*time.Second, time.Time{}, nil); got != 0 {
		t.Fatalf("second sweep found %d, want 0", got)
	}
}

// leasingStore is a fakeStore that holds the sweep lease or not.
type leasingStore struct {
	*fakeStore
	held atomic.Bool
	asks atomic.Int64
}

func (s *leasingStore) HoldLease(context.Context, string) (bool, error) {
	s.asks.Add(1)
	return s.held.Load(), nil
}
func (s *leasingStore) ReleaseLease(context.Context, string) error { return nil }

// When the bus recovers, the sweep routes at once the messages stored
// before, however young (accepted while the bus was down); only on the
// instance holding the sweep lease.
func TestSweepOnBusRecovery(t *testing.T) {
	for _, held := range []bool{true, false} {
		t.Run(fmt.Sprintf("lease held %v", held), func(t *testing.T) {
			young := &envelope.Envelope{ID: "young", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:off", Payload: []byte("c"), CreatedAt: time.Now().Add(-time.Second)}
			st := &leasingStore{fakeStore: &fakeStore{envs: []*envelope.Envelope{young}}}
			st.held.Store(held)
			n := &fakeNotifier{}
			b := &recoveringBus{fakeBus: &fakeBus{}}
			p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second, RerouteAfter: time.Hour}, st, presenceByUser{}, b)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); p.sweep(ctx) }()
			defer func() { cancel(); <-done }()
			waitFor(t, "the sweep's first round", func() bool { return st.asks.Load() >= 1 && b.listeners() == 1 })
			if st.isRouted("young") {
				t.Fatal("a message younger than reroute_after swept on the timer")
			}
			b.recover()
			if held {
				waitFor(t, "the young message swept on the bus's recovery", func() bool { return st.isRouted("young") })
				if got := n.notifications(); len(got) != 1 || got[0].MessageID != "young" {
					t.Fatalf("pushes %+v, want one for the swept message", got)
				}
				return
			}
			waitFor(t, "the lease asked for on the bus's recovery", func() bool { return st.asks.Load() >= 2 })
			if st.isRouted("young") || len(n.notifications()) != 0 {
				t.Fatal("an instance without the sweep lease swept")
			}
		})
	}
}
