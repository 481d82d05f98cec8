package bustest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// RunPackTests checks packed deliveries (bus.Options.PackDeliveries): the
// events of one PublishDeliveries call for one instance travel as one
// engine message, and each reaches the handler as if sent alone, in order
// per key, settled on its own.
func RunPackTests(t *testing.T, h Harness) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"OneEngineMessagePerInstanceInOrder", testPackOrder},
		{"PoisonEventDeadLetteredAlone", testPackPoison},
		{"FailedEventRedeliversPack", testPackRetry},
		{"MalformedPackDeadLettered", testPackMalformed},
		{"EachEventContinuesItsTrace", testPackTrace},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, h)
		})
	}
}

// countingDriver counts the messages published on the delivery queue.
type countingDriver struct {
	driver.Driver
	deliveries atomic.Int64
}

func (d *countingDriver) Publish(ctx context.Context, queue string, ms []*driver.Message) error {
	if queue == driver.QueueDelivery {
		d.deliveries.Add(int64(len(ms)))
	}
	return d.Driver.Publish(ctx, queue, ms)
}

// packedBus is makeBus with packing on, over a driver that counts delivery
// publishes.
func packedBus(t *testing.T, h Harness, o Options) (*bus.Bus, *countingDriver) {
	t.Helper()
	o.PackDeliveries = true
	d := &countingDriver{Driver: h.MakeDriver(t, o)}
	return newBus(t, d, busOptions(t, o)), d
}

// startProbed starts instance's delivery receiver with h for every event
// but the probes, and returns once a probe has reached it.
func startProbed(t *testing.T, b *bus.Bus, instance string, h bus.Handler) {
	t.Helper()
	probes := newCollector()
	startDelivery(t, b, instance, func(ctx context.Context, m *bus.Message) error {
		if strings.HasPrefix(m.ID, "probe-") {
			return probes.handler(ctx, m)
		}
		return h(ctx, m)
	})
	awaitDeliverySubscription(t, b, instance, probes)
}

// Two instances' events, interleaved, in calls of 50 events: each instance
// gets its own, per key in publish order across packs, with their ids,
// keys and attributes, on the first attempt; the engine carried one
// message per call and instance.
func testPackOrder(t *testing.T, h Harness) {
	b, d := packedBus(t, h, orderingOptions)
	insts := []string{"pack-a", "pack-b"}
	checkers := map[string]*orderChecker{}
	var badAttrs atomic.Int64
	for _, inst := range insts {
		c := newOrderChecker("po-" + inst)
		checkers[inst] = c
		startProbed(t, b, inst, func(ctx context.Context, m *bus.Message) error {
			if m.Attributes["stored"] != "1" || m.Attributes[bus.AttrPacked] != "" {
				badAttrs.Add(1)
			}
			return c.handler(ctx, m)
		})
	}
	var ds []bus.Delivery
	for i := range checkers[insts[0]].msgs {
		for _, inst := range insts {
			m := *checkers[inst].msgs[i]
			m.Attributes = map[string]string{"stored": "1"}
			ds = append(ds, bus.Delivery{Instance: inst, Message: &m})
		}
	}
	before := d.deliveries.Load()
	const per = 50
	calls := 0
	for start := 0; start < len(ds); start += per {
		if err := b.PublishDeliveries(ctxTimeout(t), ds[start:min(start+per, len(ds))]); err != nil {
			t.Fatal(err)
		}
		calls++
	}
	if got, want := d.deliveries.Load()-before, int64(calls*len(insts)); got != want {
		t.Errorf("%d events in %d calls went out as %d engine messages, want %d (one per call and instance)", len(ds), calls, got, want)
	}
	for inst, c := range checkers {
		waitProgress(t, "every delivery event of "+inst, len(c.msgs), c.handledCount)
		c.check(t)
	}
	if n := badAttrs.Load(); n > 0 {
		t.Errorf("%d events lost their attributes or showed the pack's", n)
	}
}

// One event of a pack fails permanently: it alone is dead-lettered, with
// its own id, body, key and attributes; the others are handled once; a
// replay brings it back alone.
func testPackPoison(t *testing.T, h Harness) {
	b, _ := packedBus(t, h, fastRetry)
	c := newCollector()
	var fixed atomic.Bool
	startProbed(t, b, "pack-p", func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		if m.ID == "pp-2" && !fixed.Load() {
			return fmt.Errorf("bad event: %w", bus.ErrPermanent)
		}
		return nil
	})
	var ds []bus.Delivery
	var poison *bus.Message
	for i := range 5 {
		m := &bus.Message{ID: "pp-" + strconv.Itoa(i), Data: []byte("event " + strconv.Itoa(i)), OrderingKey: "pack-p/r1",
			Attributes: map[string]string{"stored": "1"}}
		if i == 2 {
			poison = m
		}
		ds = append(ds, bus.Delivery{Instance: "pack-p", Message: m})
	}
	if err := b.PublishDeliveries(ctxTimeout(t), ds); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every event", func() bool { return c.distinct() == 5 })
	dead := waitDead(t, b, bus.QueueDelivery, 1)
	checkDead(t, dead[0], bus.QueueDelivery, poison, 1, "bad event")
	if !quiet(300*time.Millisecond, func() bool { return c.totalCount() > 5 }) {
		t.Errorf("events handled %d times in all, want 5 (the pack was redelivered)", c.totalCount())
	}
	fixed.Store(true)
	n, err := b.ReplayDead(ctxTimeout(t), bus.QueueDelivery, nil)
	if err != nil || n != 1 {
		t.Fatalf("ReplayDead = %d, %v; want 1", n, err)
	}
	waitFor(t, "the replayed event", func() bool { return c.count("pp-2") == 2 })
	if got := c.totalCount(); got != 6 {
		t.Errorf("events handled %d times after the replay, want 6", got)
	}
}

// One event fails once: the pack comes back, every event on attempt 2.
func testPackRetry(t *testing.T, h Harness) {
	b, _ := packedBus(t, h, fastRetry)
	c := newCollector()
	var failed atomic.Bool
	startProbed(t, b, "pack-r", func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		if m.ID == "pr-1" && failed.CompareAndSwap(false, true) {
			return errors.New("try again")
		}
		return nil
	})
	var ds []bus.Delivery
	for i := range 3 {
		ds = append(ds, bus.Delivery{Instance: "pack-r", Message: &bus.Message{ID: "pr-" + strconv.Itoa(i), Data: []byte("x")}})
	}
	if err := b.PublishDeliveries(ctxTimeout(t), ds); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every event twice", func() bool {
		for i := range 3 {
			if c.count("pr-"+strconv.Itoa(i)) < 2 {
				return false
			}
		}
		return true
	})
	for i := range 3 {
		id := "pr-" + strconv.Itoa(i)
		if got := c.attemptsOf(id); len(got) != 2 || got[0] != 1 || got[1] != 2 {
			t.Errorf("%s handled on attempts %v, want [1 2]", id, got)
		}
	}
	if d := listDead(t, b, bus.QueueDelivery); len(d) != 0 {
		t.Errorf("dead-letter queue holds %d messages, want 0", len(d))
	}
}

// A pack whose body cannot be decoded goes to the dead-letter queue whole,
// without reaching the handler.
func testPackMalformed(t *testing.T, h Harness) {
	b, d := packedBus(t, h, fastRetry)
	c := newCollector()
	startProbed(t, b, "pack-m", func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		return nil
	})
	bad := &driver.Message{ID: "bad-pack", Data: []byte{1, 3, 0xff}, Instance: "pack-m",
		Attributes: map[string]string{bus.AttrInstance: "pack-m", bus.AttrPacked: "3"}}
	if err := d.Driver.Publish(ctxTimeout(t), driver.QueueDelivery, []*driver.Message{bad}); err != nil {
		t.Fatal(err)
	}
	dead := waitDead(t, b, bus.QueueDelivery, 1)
	if dead[0].Message.ID != "bad-pack" || !strings.Contains(dead[0].Reason, "malformed pack") {
		t.Errorf("dead message %s, reason %q; want bad-pack, malformed pack", dead[0].Message.ID, dead[0].Reason)
	}
	if n := c.totalCount(); n != 0 {
		t.Errorf("handler called %d times for a malformed pack", n)
	}
}

// Two events published in one pack under two callers' spans: each one's
// processing span is the child of its own producer span, in its caller's
// trace.
func testPackTrace(t *testing.T, h Harness) {
	o := fastRetry
	o.PackDeliveries = true
	b, rec, tracer := tracedBus(t, h, o)
	var mu sync.Mutex
	seen := map[string]trace.SpanContext{}
	startProbed(t, b, "pack-t", func(ctx context.Context, m *bus.Message) error {
		mu.Lock()
		defer mu.Unlock()
		seen[m.ID] = trace.SpanContextFromContext(ctx)
		return nil
	})
	callers := map[string]trace.SpanContext{}
	var ds []bus.Delivery
	for _, id := range []string{"pt-1", "pt-2"} {
		_, span := tracer.Start(context.Background(), "caller "+id)
		callers[id] = span.SpanContext()
		ds = append(ds, bus.Delivery{Instance: "pack-t", Message: &bus.Message{ID: id, Data: []byte("x"), Trace: span.SpanContext()}})
		span.End()
	}
	if err := b.PublishDeliveries(ctxTimeout(t), ds); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"pt-1", "pt-2"} {
		send := waitSpan(t, rec, "send delivery", id)
		checkChild(t, send, callers[id])
		process := waitSpan(t, rec, "process delivery", id)
		checkChild(t, process, send.SpanContext())
		mu.Lock()
		got := seen[id]
		mu.Unlock()
		if got.SpanID() != process.SpanContext().SpanID() {
			t.Errorf("%s: handler ran in span %s, want its processing span %s", id, got.SpanID(), process.SpanContext().SpanID())
		}
	}
}
