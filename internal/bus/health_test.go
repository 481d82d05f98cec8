package bus

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// flakyDriver is nopDriver whose publishes and pings fail while down.
type flakyDriver struct {
	nopDriver
	down *atomic.Bool
}

func (d flakyDriver) Publish(context.Context, string, []*driver.Message) error {
	if d.down.Load() {
		return errors.New("engine down")
	}
	return nil
}

func (d flakyDriver) Ping(context.Context) error {
	if d.down.Load() {
		return errors.New("engine down")
	}
	return nil
}

// A publish that fails marks the bus down; the bus then probes the
// engine, and once it answers calls each function registered with
// OnRecovered, once per recovery, with nothing published meanwhile. A
// publish its caller gave up on tells nothing of the engine.
func TestRecoveryAnnounced(t *testing.T) {
	down := &atomic.Bool{}
	b := New(flakyDriver{down: down}, Options{})
	defer b.Close()
	var recovered atomic.Int32
	unregister := b.OnRecovered(func() { recovered.Add(1) })

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = b.PublishIngress(ctx, &Message{ID: "m0"})
	if d, _ := b.Down(); d {
		t.Fatal("a publish its caller cancelled marked the bus down")
	}
	down.Store(true)
	if err := b.PublishIngress(context.Background(), &Message{ID: "m1"}); err == nil {
		t.Fatal("publish to a down engine succeeded")
	}
	if d, _ := b.Down(); !d {
		t.Fatal("a failed publish did not mark the bus down")
	}
	down.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for recovered.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("recovery never announced")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d, _ := b.Down(); d {
		t.Fatal("bus still down after its engine answered")
	}
	if err := b.PublishIngress(context.Background(), &Message{ID: "m2"}); err != nil {
		t.Fatal(err)
	}
	if n := recovered.Load(); n != 1 {
		t.Fatalf("recovery announced %d times, want once", n)
	}
	unregister()
	down.Store(true)
	_ = b.PublishIngress(context.Background(), &Message{ID: "m3"})
	down.Store(false)
	_ = b.PublishIngress(context.Background(), &Message{ID: "m4"})
	if n := recovered.Load(); n != 1 {
		t.Fatalf("an unregistered function was called (%d)", n)
	}
}
