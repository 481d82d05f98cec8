// Package drivertest checks the promises of a bus driver's primitives, the
// way gocloud.dev's pubsub/drivertest checks its drivers: publish and
// receive with every field intact, delivery events only to their instance,
// ack and nack, ordering keys, deduplication where Capabilities claims it,
// dead-letter copies (list, get, delete), cancellation and closing. The
// delivery policy built on these (retries, batches, dead-letter decisions)
// is checked through the portable bus by bustest.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Options are what a test asks of the driver it is given.
type Options struct {
	// AckDeadline is how long a received message may stay unsettled.
	AckDeadline time.Duration
	// MaxDeliveryAttempts is the engine's own limit of deliveries.
	MaxDeliveryAttempts int
}

// Promise names a promise that an engine, or the stand-in a test runs it
// on, may be unable to keep.
type Promise string

// PromiseRetryBackoff: an engine without Capabilities.NackDelay spaces the
// redeliveries of a nacked message by its retry policy.
const PromiseRetryBackoff Promise = "retry policy spaces redeliveries"

// Harness builds drivers for the suite.
type Harness interface {
	// MakeTestDriver returns a driver on fresh topics or streams that no
	// other call shares; the harness closes it and removes what it created
	// when t ends. The suite may close it earlier.
	MakeTestDriver(t *testing.T, o Options) driver.Driver
	// Unkept returns why the engine under test cannot keep p, or "" when
	// it keeps it.
	Unkept(p Promise) string
}

const waitTimeout = 20 * time.Second

// RunDriverTests runs the driver suite against h; the subtests run in
// parallel.
func RunDriverTests(t *testing.T, h Harness) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"PublishReceive", testPublishReceive},
		{"DeliveryOnlyToItsInstance", testDeliveryAddressing},
		{"AckAndNack", testAckNack},
		{"NackDelay", testNackDelay},
		{"OrderingKey", testOrderingKey},
		{"Deduplication", testDedup},
		{"DeadLetterCopies", testDeadLetter},
		{"ReceiveCancelled", testReceiveCancelled},
		{"IngressBacklog", testBacklog},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, h)
		})
	}
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func subscribe(t *testing.T, d driver.Driver, queue, instance string) driver.Subscription {
	t.Helper()
	s, err := d.Subscribe(ctxTimeout(t), queue, instance)
	if err != nil {
		t.Fatalf("Subscribe(%s, %q): %v", queue, instance, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func publish(t *testing.T, d driver.Driver, queue string, ms ...*driver.Message) {
	t.Helper()
	if err := d.Publish(ctxTimeout(t), queue, ms); err != nil {
		t.Fatalf("Publish(%s): %v", queue, err)
	}
}

// receiveN receives until n messages came, or fails.
func receiveN(t *testing.T, s driver.Subscription, n int) []*driver.Message {
	t.Helper()
	ctx := ctxTimeout(t)
	var out []*driver.Message
	for len(out) < n {
		ms, err := s.Receive(ctx, n-len(out))
		if err != nil {
			t.Fatalf("Receive after %d of %d messages: %v", len(out), n, err)
		}
		if len(ms) == 0 || len(ms) > n-len(out) {
			t.Fatalf("Receive(max %d) returned %d messages", n-len(out), len(ms))
		}
		out = append(out, ms...)
	}
	return out
}

// nothingWithin reports whether s receives nothing for d (an observation
// window, not a synchronisation); what it receives is released.
func nothingWithin(t *testing.T, s driver.Subscription, d time.Duration) []*driver.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	ms, err := s.Receive(ctx, 100)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive: %v", err)
	}
	for _, m := range ms {
		_ = m.Acker.Ack()
	}
	return ms
}

func ackAll(t *testing.T, ms []*driver.Message) {
	t.Helper()
	for _, m := range ms {
		if err := m.Acker.Ack(); err != nil {
			t.Errorf("Ack(%s): %v", m.ID, err)
		}
	}
}

func ids(ms []*driver.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func testPublishReceive(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{})
	want := &driver.Message{ID: "m-1", DedupID: "m-1", Data: []byte{0, 1, 0xff, 'x'}, OrderingKey: "urn:sm:user:bob",
		Attributes: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "kind": "chat"}}
	publish(t, d, driver.QueueIngress, want)
	s := subscribe(t, d, driver.QueueIngress, "")
	got := receiveN(t, s, 1)[0]
	if got.ID != want.ID || string(got.Data) != string(want.Data) || got.OrderingKey != want.OrderingKey || !maps.Equal(got.Attributes, want.Attributes) {
		t.Errorf("received %+v, want %+v", got, want)
	}
	if got.DeliveryAttempt != 1 || got.Acker == nil {
		t.Errorf("received attempt %d acker %v, want attempt 1 and an acker", got.DeliveryAttempt, got.Acker)
	}
	ackAll(t, []*driver.Message{got})
	if err := d.Ping(ctxTimeout(t)); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func testDeliveryAddressing(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{})
	ctx := ctxTimeout(t)
	for _, inst := range []string{"inst-a", "inst-b"} {
		if err := d.PrepareDelivery(ctx, inst); err != nil {
			t.Fatalf("PrepareDelivery(%s): %v", inst, err)
		}
	}
	ev := func(id, inst string) *driver.Message {
		return &driver.Message{ID: id, DedupID: id, Data: []byte(id), Instance: inst, Attributes: map[string]string{driver.AttrInstance: inst}}
	}
	publish(t, d, driver.QueueDelivery, ev("a-1", "inst-a"), ev("b-1", "inst-b"), ev("a-2", "inst-a"))
	sa := subscribe(t, d, driver.QueueDelivery, "inst-a")
	sb := subscribe(t, d, driver.QueueDelivery, "inst-b")
	ga := receiveN(t, sa, 2)
	gb := receiveN(t, sb, 1)
	ackAll(t, ga)
	ackAll(t, gb)
	if got := ids(ga); !slices.Equal(slices.Sorted(slices.Values(got)), []string{"a-1", "a-2"}) {
		t.Errorf("inst-a received %v", got)
	}
	if got := ids(gb); !slices.Equal(got, []string{"b-1"}) {
		t.Errorf("inst-b received %v", got)
	}
	for _, m := range append(ga, gb...) {
		if want := map[string]string{"a": "inst-a", "b": "inst-b"}[m.ID[:1]]; m.Instance != want {
			t.Errorf("%s received with Instance %q, want %q", m.ID, m.Instance, want)
		}
	}
	if extra := nothingWithin(t, sb, 300*time.Millisecond); len(extra) > 0 {
		t.Errorf("inst-b received %v more", ids(extra))
	}
}

func testAckNack(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{MaxDeliveryAttempts: 10})
	publish(t, d, driver.QueueIngress, &driver.Message{ID: "acked", DedupID: "acked", Data: []byte("1")},
		&driver.Message{ID: "nacked", DedupID: "nacked", Data: []byte("2")})
	s := subscribe(t, d, driver.QueueIngress, "")
	for _, m := range receiveN(t, s, 2) {
		var err error
		if m.ID == "acked" {
			err = m.Acker.Ack()
		} else {
			err = m.Acker.Nack(0)
		}
		if err != nil {
			t.Fatalf("settle %s: %v", m.ID, err)
		}
	}
	again := receiveN(t, s, 1)[0]
	if again.ID != "nacked" || again.DeliveryAttempt != 2 {
		t.Errorf("after ack and nack received %s attempt %d, want nacked attempt 2", again.ID, again.DeliveryAttempt)
	}
	ackAll(t, []*driver.Message{again})
	publish(t, d, driver.QueueIngress, &driver.Message{ID: "marker", DedupID: "marker", Data: []byte("3")})
	m := receiveN(t, s, 1)[0]
	ackAll(t, []*driver.Message{m})
	if m.ID != "marker" {
		t.Errorf("received %s (attempt %d) after the marker was published, want only the marker", m.ID, m.DeliveryAttempt)
	}
}

func testNackDelay(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{MaxDeliveryAttempts: 10})
	if !d.Capabilities().NackDelay {
		if why := h.Unkept(PromiseRetryBackoff); why != "" {
			t.Skipf("the engine's retry policy spaces redeliveries, and this engine cannot show it: %s", why)
		}
	}
	const delay = 700 * time.Millisecond
	publish(t, d, driver.QueueIngress, &driver.Message{ID: "later", DedupID: "later", Data: []byte("x")})
	s := subscribe(t, d, driver.QueueIngress, "")
	m := receiveN(t, s, 1)[0]
	start := time.Now()
	if err := m.Acker.Nack(delay); err != nil {
		t.Fatal(err)
	}
	again := receiveN(t, s, 1)[0]
	if waited := time.Since(start); waited < delay*8/10 {
		t.Errorf("nacked message redelivered after %v, want at least about %v", waited, delay)
	}
	ackAll(t, []*driver.Message{again})
}

func testOrderingKey(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{})
	const n = 40
	var batch []*driver.Message
	for i := range n {
		id := fmt.Sprintf("o-%03d", i)
		m := &driver.Message{ID: id, DedupID: id, Data: []byte(id), OrderingKey: "k"}
		if i < n/2 {
			publish(t, d, driver.QueueIngress, m)
		} else {
			batch = append(batch, m)
		}
	}
	publish(t, d, driver.QueueIngress, batch...)
	s := subscribe(t, d, driver.QueueIngress, "")
	var got []string
	for len(got) < n {
		ms := receiveN(t, s, 1)
		ackAll(t, ms)
		got = append(got, ids(ms)...)
	}
	if !slices.IsSorted(got) {
		t.Errorf("one key's messages received out of publish order: %v", got)
	}
}

func testDedup(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{})
	window := d.Capabilities().DedupWindow
	publish(t, d, driver.QueueIngress, &driver.Message{ID: "dup", DedupID: "dup", Data: []byte("first")})
	publish(t, d, driver.QueueIngress, &driver.Message{ID: "dup", DedupID: "dup", Data: []byte("second")})
	publish(t, d, driver.QueueIngress, &driver.Message{ID: "replay", Data: []byte("r1")})
	publish(t, d, driver.QueueIngress, &driver.Message{ID: "replay", Data: []byte("r2")})
	s := subscribe(t, d, driver.QueueIngress, "")
	want := 4
	if window > 0 {
		want = 3 // one "dup"; messages without a DedupID are never deduplicated
	}
	got := receiveN(t, s, want)
	ackAll(t, got)
	if extra := nothingWithin(t, s, 300*time.Millisecond); len(extra) > 0 {
		t.Errorf("DedupWindow %v: received %v, then %v more", window, ids(got), ids(extra))
	}
}

func testDeadLetter(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{})
	ctx := ctxTimeout(t)
	if err := d.PrepareDelivery(ctx, "dl-inst"); err != nil {
		t.Fatal(err)
	}
	orig := &driver.Message{ID: "ev-1", DedupID: "ev-1", Data: []byte("event"), OrderingKey: "dl-inst/urn:sm:user:bob", Instance: "dl-inst",
		Attributes: map[string]string{driver.AttrInstance: "dl-inst", "kind": "chat"}}
	publish(t, d, driver.QueueDelivery, orig)
	s := subscribe(t, d, driver.QueueDelivery, "dl-inst")
	m := receiveN(t, s, 1)[0]
	dead := *m
	dead.Attributes = maps.Clone(m.Attributes)
	dead.Attributes["dead_letter_reason"] = "bad event"
	if err := d.DeadLetter(ctx, driver.QueueDelivery, &dead); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	ackAll(t, []*driver.Message{m})

	var list []driver.DeadMessage
	deadline := time.Now().Add(waitTimeout)
	for len(list) == 0 && time.Now().Before(deadline) {
		var err error
		if list, err = d.ListDead(ctx, driver.QueueDelivery, 0); err != nil {
			t.Fatalf("ListDead: %v", err)
		}
	}
	if len(list) != 1 {
		t.Fatalf("ListDead returned %d messages, want 1", len(list))
	}
	got := list[0]
	if got.Message.ID != orig.ID || string(got.Message.Data) != "event" || got.Message.OrderingKey != orig.OrderingKey ||
		got.Message.Instance != "dl-inst" || got.Message.Attributes["kind"] != "chat" || got.Message.Attributes["dead_letter_reason"] != "bad event" {
		t.Errorf("dead copy %+v, want the original with its ordering key, instance and attributes", got.Message)
	}
	if one, err := d.GetDead(ctx, driver.QueueDelivery, got.ID); err != nil || one.Message.ID != orig.ID {
		t.Errorf("GetDead(%s) = %+v, %v", got.ID, one, err)
	}
	if _, err := d.GetDead(ctx, driver.QueueDelivery, "no-such"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("GetDead(unknown) returned %v, want ErrNotFound", err)
	}
	if l, err := d.ListDead(ctx, driver.QueueIngress, 0); err != nil || len(l) != 0 {
		t.Errorf("ingress dead letters: %d, %v; want none", len(l), err)
	}
	if n, err := d.DeleteDead(ctx, driver.QueueDelivery, []string{got.ID, "no-such"}); err != nil || n != 1 {
		t.Errorf("DeleteDead = %d, %v; want 1, nil", n, err)
	}
	if l, err := d.ListDead(ctx, driver.QueueDelivery, 0); err != nil || len(l) != 0 {
		t.Errorf("after DeleteDead: %d, %v; want none", len(l), err)
	}
	if n, err := d.DeleteDead(ctx, driver.QueueDelivery, nil); err != nil || n != 0 {
		t.Errorf("DeleteDead(all) on an empty queue = %d, %v; want 0, nil", n, err)
	}
}

func testReceiveCancelled(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{})
	s := subscribe(t, d, driver.QueueIngress, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Receive(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Receive on a cancelled context returned %v, want context.Canceled", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func testClosed(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{})
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := ctxTimeout(t)
	if err := d.Publish(ctx, driver.QueueIngress, []*driver.Message{{ID: "x", Data: []byte("x")}}); !errors.Is(err, driver.ErrClosed) {
		t.Errorf("Publish after Close returned %v, want ErrClosed", err)
	}
	if _, err := d.Subscribe(ctx, driver.QueueIngress, ""); !errors.Is(err, driver.ErrClosed) {
		t.Errorf("Subscribe after Close returned %v, want ErrClosed", err)
	}
	if err := d.Ping(ctx); !errors.Is(err, driver.ErrClosed) {
		t.Errorf("Ping after Close returned %v, want ErrClosed", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func testBacklog(t *testing.T, h Harness) {
	d := h.MakeTestDriver(t, Options{})
	ctx := ctxTimeout(t)
	if !d.Capabilities().Backlog {
		if _, err := d.IngressBacklog(ctx); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("IngressBacklog without the capability returned %v, want ErrUnsupported", err)
		}
		return
	}
	// The engine's counts follow publishes and acks a moment later: wait
	// for each expected value.
	backlogReaches := func(what string, want int64) {
		t.Helper()
		deadline := time.Now().Add(waitTimeout)
		for {
			n, err := d.IngressBacklog(ctx)
			if err == nil && n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("IngressBacklog %s = %d, %v; want %d", what, n, err, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	backlogReaches("of a fresh queue", 0)
	for i := range 5 {
		id := fmt.Sprintf("b-%d", i)
		publish(t, d, driver.QueueIngress, &driver.Message{ID: id, DedupID: id, Data: []byte("x")})
	}
	backlogReaches("after 5 publishes", 5)
	s := subscribe(t, d, driver.QueueIngress, "")
	ms := receiveN(t, s, 5)
	backlogReaches("with 5 received, unsettled", 5)
	ackAll(t, ms)
	backlogReaches("after acking everything", 0)
}
