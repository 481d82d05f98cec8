package bus

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// capsDriver is nopDriver with the capabilities given.
type capsDriver struct {
	nopDriver
	caps driver.Capabilities
}

func (d capsDriver) Capabilities() driver.Capabilities { return d.caps }

// countingAcker counts how a message is settled and extended.
type countingAcker struct{ acks, nacks, extends atomic.Int32 }

func (a *countingAcker) Ack() error               { a.acks.Add(1); return nil }
func (a *countingAcker) Nack(time.Duration) error { a.nacks.Add(1); return nil }
func (a *countingAcker) Extend() error            { a.extends.Add(1); return nil }

// The portable bus extends the messages it holds back while a backend is
// down on an engine whose Capabilities say it needs that, and never on
// one that says it does not: it learns this from the driver's
// Capabilities, not from the type of an Acker.
func TestHeldMessagesAreExtendedWhereTheCapabilitiesSay(t *testing.T) {
	for _, extend := range []bool{true, false} {
		b := New(capsDriver{caps: driver.Capabilities{Extend: extend}}, Options{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
		ak := &countingAcker{}
		dm := &driver.Message{ID: "m1", Data: []byte("x"), DeliveryAttempt: 1, Acker: ak}
		calls := 0
		handler := func(ctx context.Context, ms []*Message) []error {
			calls++
			if calls < 3 { // down twice, then up
				return []error{ErrUnavailable}
			}
			return []error{nil}
		}
		b.run(context.Background(), QueueIngress, handler, []received{{dm: dm, m: incoming(dm)}}, newGate(func(bool) {}))
		b.Close()
		if calls != 3 || ak.acks.Load() != 1 || ak.nacks.Load() != 0 {
			t.Fatalf("extend=%v: handler ran %d times, %d acks, %d nacks; want 3, 1, 0", extend, calls, ak.acks.Load(), ak.nacks.Load())
		}
		if got, want := ak.extends.Load(), map[bool]int32{true: 2, false: 0}[extend]; got != want {
			t.Errorf("Capabilities.Extend %v: the held message was extended %d times, want %d (once before each retry)", extend, got, want)
		}
	}
}

// An event of a pack that is dead-lettered reaches the driver's
// DeadLetter with the pack's own Acker and its place in the pack stated on
// the message, for a driver that needs the engine message (NATS).
func TestDeadEventOfAPackNamesItsPack(t *testing.T) {
	d := &deadDriver{}
	b := New(d, Options{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	defer b.Close()
	p := b.packs(testEvents("inst-a", 3, 10))[0]
	pack := &countingAcker{}
	p.Acker, p.DeliveryAttempt = pack, 1
	handler := func(ctx context.Context, ms []*Message) []error {
		errs := make([]error, len(ms))
		for i, m := range ms {
			if m.ID == "inst-a-1" {
				errs[i] = ErrPermanent
			}
		}
		return errs
	}
	b.runPack(context.Background(), QueueDelivery, 8, handler, received{dm: p, m: incoming(p)}, newGate(func(bool) {}))
	if len(d.dead) != 1 {
		t.Fatalf("%d messages dead-lettered, want 1", len(d.dead))
	}
	if m := d.dead[0]; m.ID != "inst-a-1" || m.Pack != driver.Acker(pack) || m.PackIndex != 1 {
		t.Fatalf("dead-lettered %s with Pack %v, PackIndex %d; want inst-a-1 with the pack's Acker and 1", m.ID, m.Pack, m.PackIndex)
	}
	if pack.acks.Load() != 1 {
		t.Errorf("the pack was acked %d times, want 1", pack.acks.Load())
	}
}

// deadDriver records what it is asked to dead-letter.
type deadDriver struct {
	nopDriver
	dead []*driver.Message
}

func (d *deadDriver) DeadLetter(_ context.Context, _ string, m *driver.Message) error {
	d.dead = append(d.dead, m)
	return nil
}
