package natsbus

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/bustest"
)

// steadyDuration is how long the steady-rate test runs: long enough for
// dozens of pull-request expiries (10 s each) and server timeout replies,
// which is where a pull loop with one request open at a time stalled.
const steadyDuration = 40 * time.Second

// At a steady rate against the external server, no message waits more
// than 500 ms between its publish and its receipt: pull requests stay open
// back to back, so an expiring request or a late timeout reply never
// leaves the consumer without one.
func TestSteadyRateHasNoDeliveryGap(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 40 s; skipped with -short")
	}
	t.Parallel()
	h := externalHarness(t)
	d := newTestDriver(t, h.nc, testConfig(bustest.Options{MaxDeliveryAttempts: 5, AckDeadline: 30 * time.Second, MaxOutstanding: 256}))
	b := bus.New(d, bus.Options{MaxOutstanding: 256, Logger: quietLogger})
	t.Cleanup(func() { _ = b.Close() })

	var mu sync.Mutex
	var worst time.Duration
	worstID, received := "", 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveIngress(ctx, func(_ context.Context, m *bus.Message) error {
			sent, err := strconv.ParseInt(string(m.Data), 10, 64)
			if err != nil {
				return err
			}
			lat := time.Since(time.Unix(0, sent))
			mu.Lock()
			received++
			if lat > worst {
				worst, worstID = lat, m.ID
			}
			mu.Unlock()
			return nil
		})
	}()
	defer func() {
		cancel()
		<-done
	}()

	const interval = 20 * time.Millisecond
	tick := time.NewTicker(interval)
	defer tick.Stop()
	end := time.Now().Add(steadyDuration)
	n := 0
	for time.Now().Before(end) {
		<-tick.C
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := b.PublishIngress(pctx, &bus.Message{ID: "steady-" + strconv.Itoa(n), Data: []byte(strconv.FormatInt(time.Now().UnixNano(), 10))})
		pcancel()
		if err != nil {
			t.Fatalf("publish %d: %v", n, err)
		}
		n++
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := received
		mu.Unlock()
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d messages over %v; worst publish-to-receipt delay %v (%s)", n, steadyDuration, worst, worstID)
	if worst > 500*time.Millisecond {
		t.Errorf("a message waited %v (%s) between publish and receipt, want under 500ms", worst, worstID)
	}
}
