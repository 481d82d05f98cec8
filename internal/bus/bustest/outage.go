package bustest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// testOutageHolds: a handler that answers bus.ErrUnavailable (a backend is
// down) for longer than the ack deadline and than every delivery attempt
// would last costs no attempt: the receiver holds the message, takes no new
// ones meanwhile, and once the backend is back handles everything in
// order, with nothing dead-lettered.
func testOutageHolds(t *testing.T, h Harness) {
	o := fastRetry
	var dead, pausedNow atomic.Int32
	b := bus.New(h.MakeDriver(t, o), bus.Options{
		MaxDeliveryAttempts: o.MaxDeliveryAttempts,
		MinBackoff:          o.MinBackoff,
		MaxBackoff:          o.MaxBackoff,
		OutageBackoff:       200 * time.Millisecond,
		MaxOutstanding:      o.MaxOutstanding,
		Logger:              testLogger(t),
		OnDeadLetter:        func(string, string) { dead.Add(1) },
		OnOutage: func(_ string, paused bool) {
			if paused {
				pausedNow.Store(1)
			} else {
				pausedNow.Store(0)
			}
		},
	})
	t.Cleanup(func() { _ = b.Close() })

	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	var handled []string         // in order, successes only
	seenDown := map[string]int{} // calls while down, by id
	attempts := map[string]int{}
	startIngress(t, b, func(ctx context.Context, m *bus.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if down.Load() {
			seenDown[m.ID]++
			return fmt.Errorf("presence: %w: connection refused", bus.ErrUnavailable)
		}
		handled = append(handled, m.ID)
		attempts[m.ID] = m.DeliveryAttempt
		return nil
	})
	const key = "recipient-outage"
	publishIngress(t, b, &bus.Message{ID: "first", Data: []byte("x"), OrderingKey: key})
	waitFor(t, "the first message tried during the outage", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seenDown["first"] >= 3
	})
	if pausedNow.Load() != 1 {
		t.Error("OnOutage did not report the pause")
	}
	var want []string
	want = append(want, "first")
	for i := range 5 {
		id := fmt.Sprintf("later-%d", i)
		want = append(want, id)
		key := key
		if i%2 == 1 {
			key = fmt.Sprintf("other-%d", i)
		}
		publishIngress(t, b, &bus.Message{ID: id, Data: []byte("x"), OrderingKey: key})
	}
	// The outage outlasts the ack deadline and the whole retry budget.
	outageEnds := time.Now().Add(o.AckDeadline + time.Second)
	for time.Now().Before(outageEnds) {
		time.Sleep(50 * time.Millisecond)
	}
	down.Store(false)
	waitFor(t, "every message handled after the outage", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) >= len(want)
	})

	mu.Lock()
	defer mu.Unlock()
	for id, n := range seenDown {
		if id != "first" {
			t.Errorf("message %s was taken %d times while the receiver was paused", id, n)
		}
	}
	if handled[0] != "first" {
		t.Errorf("handled %v after the outage, want the held message first", handled)
	}
	for _, id := range want {
		if !slices.Contains(handled, id) {
			t.Errorf("message %s not handled after the outage (handled %v)", id, handled)
		}
	}
	if attempts["first"] != 1 {
		t.Errorf("the held message was handled on attempt %d, want 1 (an outage costs no attempt)", attempts["first"])
	}
	if n := dead.Load(); n != 0 {
		t.Errorf("%d messages dead-lettered by an outage", n)
	}
	if pausedNow.Load() != 0 {
		t.Error("OnOutage did not report the resume")
	}
}
