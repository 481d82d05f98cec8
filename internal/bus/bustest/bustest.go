// Package bustest holds the portable suites: they run the portable bus
// (bus.Bus) over a driver and check the delivery policy that the bus owns,
// identical on every engine: publishing and receiving, ordering keys,
// batches, retries, dead-lettering and replay. Every driver's test file
// supplies a Harness and calls RunConformanceTests, RunBatchTests and
// RunDeadLetterTests; the driver's own primitives are checked by
// drivertest.
//
// The ordering tests check bus.Message.OrderingKey on ingress and on the
// delivery events of one instance: per key, publish order and one handler at
// a time, for messages handled successfully on their first attempt (the
// tests never nack: a nacked message is redelivered later, out of order).
// They wait for progress rather than for a fixed time, since an engine may
// hand one key's messages over slowly (the Pub/Sub fake passes the next
// message of a key only once the previous one's ack has reached it).
package bustest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Options are the settings a test asks for. A zero field means "the
// default". The delivery policy's settings go to the portable bus; the
// harness maps the engine's (ack deadline, and the attempts and backoff
// that an engine applies by itself) onto the nearest values its engine
// accepts.
type Options struct {
	// MaxDeliveryAttempts before a message is dead-lettered.
	MaxDeliveryAttempts int
	// AckDeadline is how long a delivered message may stay unacknowledged
	// before the engine redelivers it.
	AckDeadline time.Duration
	// MinBackoff and MaxBackoff bound the delay before a nacked message is
	// redelivered.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// MaxOutstanding bounds the messages a receiver holds unacknowledged
	// (and so the handlers running at once).
	MaxOutstanding int
	// PackDeliveries packs the delivery events of one PublishDeliveries
	// call per instance (bus.Options.PackDeliveries).
	PackDeliveries bool
}

// Harness builds drivers for the suites.
type Harness interface {
	// MakeDriver returns a driver on fresh topics/streams that no other
	// MakeDriver call shares, configured for o. The suite wraps it in a
	// bus.Bus and closes that (which closes the driver); the harness
	// removes what it created when t ends (t.Cleanup).
	MakeDriver(t *testing.T, o Options) driver.Driver
}

// makeBus returns the portable bus over a new driver of h, closed when t ends.
func makeBus(t *testing.T, h Harness, o Options) *bus.Bus {
	t.Helper()
	return newBus(t, h.MakeDriver(t, o), busOptions(t, o))
}

// busOptions maps o onto the portable bus's options.
func busOptions(t *testing.T, o Options) bus.Options {
	return bus.Options{
		MaxDeliveryAttempts: o.MaxDeliveryAttempts,
		MinBackoff:          o.MinBackoff,
		MaxBackoff:          o.MaxBackoff,
		MaxOutstanding:      o.MaxOutstanding,
		PackDeliveries:      o.PackDeliveries,
		Logger:              testLogger(t),
	}
}

// newBus returns the portable bus over d with bo, closed when t ends.
func newBus(t *testing.T, d driver.Driver, bo bus.Options) *bus.Bus {
	t.Helper()
	b := bus.New(d, bo)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// waitTimeout bounds every wait in the suite. Generous: a failure costs this
// much time, a pass costs what the engine takes.
const waitTimeout = 15 * time.Second

// fastRetry are options that make redelivery quick.
var fastRetry = Options{
	MaxDeliveryAttempts: 5,
	AckDeadline:         2 * time.Second,
	MinBackoff:          10 * time.Millisecond,
	MaxBackoff:          80 * time.Millisecond,
	MaxOutstanding:      64,
}

// RunConformanceTests runs the bus.Bus conformance tests against h. The
// subtests run in parallel with each other.
func RunConformanceTests(t *testing.T, h Harness) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"PublishReceiveIngress", testPublishReceiveIngress},
		{"IngressSharedByTwoReceivers", testIngressShared},
		{"HandlerErrorRedelivers", testHandlerErrorRedelivers},
		{"DeliveryReachesOnlyItsInstance", testDeliveryTargeting},
		{"PublishDeliveryBeforeSubscribe", testPublishDeliveryBeforeSubscribe},
		{"ReceiveReturnsNilOnCancel", testReceiveReturnsOnCancel},
		{"DuplicateIDDeliveredOnce", testDuplicateID},
		{"Ping", testPing},
		{"OperationsAfterClose", testOperationsAfterClose},
		{"CloseStopsReceivers", testCloseStopsReceivers},
		{"ManyMessagesConcurrentHandlers", testManyMessages},
		{"OrderingKeysIngress", testOrderingIngress},
		{"OrderingKeysDelivery", testOrderingDelivery},
		{"OutageHoldsWithoutCountingAttempts", testOutageHolds},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, h)
		})
	}
}

// receiver runs one ReceiveIngress or ReceiveDelivery call in a goroutine
// owned by the test.
type receiver struct {
	cancel context.CancelFunc
	done   chan error
}

// startIngress starts b.ReceiveIngress(h); stop it with stop.
func startIngress(t *testing.T, b *bus.Bus, h bus.Handler) *receiver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &receiver{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- b.ReceiveIngress(ctx, h) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// startDelivery starts b.ReceiveDelivery(instance, h); stop it with stop.
func startDelivery(t *testing.T, b *bus.Bus, instance string, h bus.Handler) *receiver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &receiver{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- b.ReceiveDelivery(ctx, instance, h) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the receiver's context and checks that it returns nil. It is
// safe to call more than once.
func (r *receiver) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
			if err != nil {
				t.Errorf("receive returned %v after its context was cancelled, want nil", err)
			}
		}
	case <-time.After(waitTimeout):
		t.Errorf("receive did not return within %v after its context was cancelled", waitTimeout)
	}
}

// collector records what a handler saw.
type collector struct {
	mu       sync.Mutex
	msgs     map[string][]bus.Message // by ID, every delivery
	attempts map[string][]int
	total    int
}

func newCollector() *collector {
	return &collector{msgs: map[string][]bus.Message{}, attempts: map[string][]int{}}
}

func (c *collector) add(m *bus.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := bus.Message{ID: m.ID, Data: slices.Clone(m.Data), Attributes: maps.Clone(m.Attributes),
		OrderingKey: m.OrderingKey, DeliveryAttempt: m.DeliveryAttempt}
	c.msgs[m.ID] = append(c.msgs[m.ID], cp)
	c.attempts[m.ID] = append(c.attempts[m.ID], m.DeliveryAttempt)
	c.total++
}

// handler records every message and acks it.
func (c *collector) handler(ctx context.Context, m *bus.Message) error {
	c.add(m)
	return nil
}

func (c *collector) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs[id])
}

func (c *collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) totalCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

func (c *collector) first(id string) (bus.Message, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ms := c.msgs[id]
	if len(ms) == 0 {
		return bus.Message{}, false
	}
	return ms[0], true
}

// all returns every delivery of id, in the order handled.
func (c *collector) all(id string) []bus.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs[id])
}

func (c *collector) attemptsOf(id string) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.attempts[id])
}

func (c *collector) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.msgs))
}

// waitFor polls cond until it holds or waitTimeout passes; it fails the test
// with what when the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		<-tick.C
	}
}

// quiet watches for d (an observation window, not a synchronisation) and
// reports whether cond stayed false the whole time.
func quiet(d time.Duration, cond func() bool) bool {
	end := time.NewTimer(d)
	defer end.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return false
		}
		select {
		case <-end.C:
			return !cond()
		case <-tick.C:
		}
	}
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func publishIngress(t *testing.T, b *bus.Bus, m *bus.Message) {
	t.Helper()
	if err := b.PublishIngress(ctxTimeout(t), m); err != nil {
		t.Fatalf("PublishIngress(%s): %v", m.ID, err)
	}
}

func publishDelivery(t *testing.T, b *bus.Bus, instance string, m *bus.Message) {
	t.Helper()
	if err := b.PublishDelivery(ctxTimeout(t), instance, m); err != nil {
		t.Fatalf("PublishDelivery(%s, %s): %v", instance, m.ID, err)
	}
}

func testPublishReceiveIngress(t *testing.T, h Harness) {
	b := makeBus(t, h, Options{})
	want := &bus.Message{
		ID:         "msg-1",
		Data:       []byte{0, 1, 2, 0xff, 'h', 'i'},
		Attributes: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "kind": "chat"},
	}
	publishIngress(t, b, want)
	empty := &bus.Message{ID: "msg-empty", Data: []byte{}}
	publishIngress(t, b, empty)

	c := newCollector()
	startIngress(t, b, c.handler)
	waitFor(t, "both messages", func() bool { return c.distinct() == 2 })

	got, _ := c.first(want.ID)
	if got.ID != want.ID || string(got.Data) != string(want.Data) || !maps.Equal(got.Attributes, want.Attributes) {
		t.Errorf("received %+v, want %+v", got, *want)
	}
	if got.DeliveryAttempt != 1 {
		t.Errorf("DeliveryAttempt = %d on first delivery, want 1", got.DeliveryAttempt)
	}
	if got.OrderingKey != "" {
		t.Errorf("message published without an ordering key received with OrderingKey %q", got.OrderingKey)
	}
	gotEmpty, _ := c.first(empty.ID)
	if len(gotEmpty.Data) != 0 || len(gotEmpty.Attributes) != 0 {
		t.Errorf("empty message received as %+v", gotEmpty)
	}
}

func testIngressShared(t *testing.T, h Harness) {
	const n = 200
	b := makeBus(t, h, Options{MaxOutstanding: 8, AckDeadline: 10 * time.Second})
	for i := range n {
		publishIngress(t, b, &bus.Message{ID: fmt.Sprintf("shared-%d", i), Data: []byte("x")})
	}

	// Each receiver's handlers hold their messages until the other receiver
	// has handled one: a receiver that took all the work would block forever.
	all := newCollector()
	var seen [2]atomic.Int64
	gate := make(chan struct{})
	var gateOnce sync.Once
	mk := func(me int) bus.Handler {
		return func(ctx context.Context, m *bus.Message) error {
			seen[me].Add(1)
			if seen[1-me].Load() > 0 {
				gateOnce.Do(func() { close(gate) })
			}
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
			all.add(m)
			return nil
		}
	}
	startIngress(t, b, mk(0))
	startIngress(t, b, mk(1))
	waitFor(t, "both receivers to handle a message", func() bool {
		select {
		case <-gate:
			return true
		default:
			return false
		}
	})
	waitFor(t, fmt.Sprintf("%d messages", n), func() bool { return all.distinct() == n })
	if got := all.totalCount(); got != n {
		t.Errorf("%d deliveries of %d messages with no failures, want each once", got, n)
	}
	t.Logf("receiver 0 handled %d, receiver 1 handled %d", seen[0].Load(), seen[1].Load())
}

func testHandlerErrorRedelivers(t *testing.T, h Harness) {
	o := fastRetry
	o.MaxDeliveryAttempts = 10
	b := makeBus(t, h, o)
	c := newCollector()
	var retryDone atomic.Bool
	var okAcked atomic.Int64 // unix nanos of the ack of "ok"
	startIngress(t, b, func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		switch m.ID {
		case "retry":
			if m.DeliveryAttempt < 4 {
				return errors.New("transient failure")
			}
			retryDone.Store(true)
		case "ok":
			okAcked.Store(time.Now().UnixNano())
		}
		return nil
	})
	publishIngress(t, b, &bus.Message{ID: "ok", Data: []byte("ok")})
	publishIngress(t, b, &bus.Message{ID: "retry", Data: []byte("retry")})
	waitFor(t, "the failing message to succeed on attempt 4", retryDone.Load)

	if got, want := c.attemptsOf("retry"), []int{1, 2, 3, 4}; !slices.Equal(got, want) {
		t.Errorf("failing message seen with attempts %v, want %v", got, want)
	}
	// "ok" was acked; watch past its ack deadline for a redelivery that must not come.
	waitFor(t, "ok to be handled", func() bool { return okAcked.Load() != 0 })
	window := time.Until(time.Unix(0, okAcked.Load()).Add(o.AckDeadline + time.Second))
	if !quiet(window, func() bool { return c.count("ok") > 1 || c.count("retry") > 4 }) {
		t.Errorf("acked messages redelivered: ok %d times (attempts %v), retry %d times (attempts %v)",
			c.count("ok"), c.attemptsOf("ok"), c.count("retry"), c.attemptsOf("retry"))
	}
}

func testDeliveryTargeting(t *testing.T, h Harness) {
	const n = 50
	b := makeBus(t, h, Options{})
	ca, cb := newCollector(), newCollector()
	startDelivery(t, b, "instance-a", ca.handler)
	startDelivery(t, b, "instance-b", cb.handler)
	awaitDeliverySubscription(t, b, "instance-a", ca)
	awaitDeliverySubscription(t, b, "instance-b", cb)
	for i := range n {
		publishDelivery(t, b, "instance-a", &bus.Message{ID: fmt.Sprintf("a-%d", i), Data: []byte("for a")})
		publishDelivery(t, b, "instance-b", &bus.Message{ID: fmt.Sprintf("b-%d", i), Data: []byte("for b")})
	}
	waitFor(t, "all events on both instances", func() bool {
		return countPrefix(ca.ids(), "a-") == n && countPrefix(cb.ids(), "b-") == n
	})
	for _, id := range ca.ids() {
		if strings.HasPrefix(id, "b-") || strings.HasPrefix(id, "probe-instance-b") {
			t.Errorf("instance-a received %s, addressed to instance-b", id)
		}
	}
	for _, id := range cb.ids() {
		if strings.HasPrefix(id, "a-") || strings.HasPrefix(id, "probe-instance-a") {
			t.Errorf("instance-b received %s, addressed to instance-a", id)
		}
	}
	m, _ := ca.first("a-0")
	if string(m.Data) != "for a" || m.DeliveryAttempt != 1 {
		t.Errorf("instance-a received %+v, want data %q on attempt 1", m, "for a")
	}
}

func countPrefix(ids []string, prefix string) int {
	n := 0
	for _, id := range ids {
		if strings.HasPrefix(id, prefix) {
			n++
		}
	}
	return n
}

// awaitDeliverySubscription publishes probe events to instance until c has
// received one: ReceiveDelivery may create its subscription asynchronously,
// and events published before it exists may be dropped.
func awaitDeliverySubscription(t *testing.T, b *bus.Bus, instance string, c *collector) {
	t.Helper()
	prefix := "probe-" + instance + "-"
	deadline := time.Now().Add(waitTimeout)
	for i := 0; countPrefix(c.ids(), prefix) == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no probe event reached %s within %v", instance, waitTimeout)
		}
		publishDelivery(t, b, instance, &bus.Message{ID: fmt.Sprintf("%s%d", prefix, i), Data: []byte("probe")})
		waitForUpTo(100*time.Millisecond, func() bool { return countPrefix(c.ids(), prefix) > 0 })
	}
}

func testPublishDeliveryBeforeSubscribe(t *testing.T, h Harness) {
	b := makeBus(t, h, Options{})
	publishDelivery(t, b, "not-yet-listening", &bus.Message{ID: "early", Data: []byte("early")})
	// The instance subscribes later and receives events published from then
	// on; whether it also gets "early" is up to the engine.
	c := newCollector()
	startDelivery(t, b, "not-yet-listening", c.handler)
	awaitDeliverySubscription(t, b, "not-yet-listening", c)
	if n := c.count("early"); n > 1 {
		t.Errorf("event published before subscribing delivered %d times", n)
	}
}

// waitForUpTo polls cond for at most d and reports whether it held.
func waitForUpTo(d time.Duration, cond func() bool) bool {
	return !quiet(d, cond)
}

func testReceiveReturnsOnCancel(t *testing.T, h Harness) {
	b := makeBus(t, h, Options{})

	// Idle receivers return nil on cancel.
	for _, start := range []func(context.Context) error{
		func(ctx context.Context) error {
			return b.ReceiveIngress(ctx, func(context.Context, *bus.Message) error { return nil })
		},
		func(ctx context.Context) error {
			return b.ReceiveDelivery(ctx, "idle", func(context.Context, *bus.Message) error { return nil })
		},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- start(ctx) }()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("receive returned %v after cancel, want nil", err)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("receive did not return within %v after cancel", waitTimeout)
		}
	}

	// A busy receiver cancels its handler's context and returns only after
	// the handler has returned.
	started := make(chan struct{}, 1)
	var finished atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveIngress(ctx, func(hctx context.Context, m *bus.Message) error {
			if m.ID != "busy" {
				return nil
			}
			select {
			case started <- struct{}{}:
			default:
			}
			select {
			case <-hctx.Done():
			case <-time.After(waitTimeout):
				t.Errorf("handler context not cancelled within %v of the receive context", waitTimeout)
			}
			finished.Store(true)
			return hctx.Err()
		})
	}()
	publishIngress(t, b, &bus.Message{ID: "busy", Data: []byte("x")})
	select {
	case <-started:
	case <-time.After(waitTimeout):
		t.Fatalf("handler not called within %v", waitTimeout)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("receive returned %v after cancel, want nil", err)
		}
		if !finished.Load() {
			t.Errorf("receive returned before its in-flight handler finished")
		}
	case <-time.After(waitTimeout):
		t.Fatalf("receive did not return within %v after cancel", waitTimeout)
	}
}

// testDuplicateID checks what Capabilities says of publish-side
// deduplication: an engine with a duplicate window stores an ID published
// twice once; one without delivers it at least once, each copy with its id.
func testDuplicateID(t *testing.T, h Harness) {
	b := makeBus(t, h, Options{})
	c := newCollector()
	publishIngress(t, b, &bus.Message{ID: "dup", Data: []byte("first")})
	publishIngress(t, b, &bus.Message{ID: "dup", Data: []byte("second")})
	const markers = 20
	for i := range markers {
		publishIngress(t, b, &bus.Message{ID: fmt.Sprintf("marker-%d", i), Data: []byte("m")})
	}
	startIngress(t, b, c.handler)
	waitFor(t, "every message", func() bool { return c.distinct() == markers+1 })
	if b.Capabilities().DedupWindow == 0 {
		waitFor(t, "both copies of the duplicate", func() bool { return c.count("dup") == 2 })
		return
	}
	if !quiet(300*time.Millisecond, func() bool { return c.count("dup") > 1 }) {
		t.Fatalf("message published twice with the same id delivered %d times", c.count("dup"))
	}
	if m, _ := c.first("dup"); string(m.Data) != "first" {
		t.Errorf("duplicate kept data %q, want the first publish's %q", m.Data, "first")
	}
}

func testPing(t *testing.T, h Harness) {
	b := makeBus(t, h, Options{})
	if err := b.Ping(ctxTimeout(t)); err != nil {
		t.Fatalf("Ping on an open bus: %v", err)
	}
}

func testOperationsAfterClose(t *testing.T, h Harness) {
	b := makeBus(t, h, Options{})
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := ctxTimeout(t)
	nop := func(context.Context, *bus.Message) error { return nil }
	ops := map[string]func() error{
		"PublishIngress":  func() error { return b.PublishIngress(ctx, &bus.Message{ID: "closed", Data: []byte("x")}) },
		"PublishDelivery": func() error { return b.PublishDelivery(ctx, "x", &bus.Message{ID: "closed", Data: []byte("x")}) },
		"ReceiveIngress":  func() error { return b.ReceiveIngress(ctx, nop) },
		"ReceiveDelivery": func() error { return b.ReceiveDelivery(ctx, "x", nop) },
		"Ping":            func() error { return b.Ping(ctx) },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, bus.ErrClosed) {
			t.Errorf("%s after Close returned %v, want bus.ErrClosed", name, err)
		}
	}
	if _, err := b.ListDead(ctx, bus.QueueIngress, 10); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("ListDead after Close returned %v, want bus.ErrClosed", err)
	}
	// Closing twice is harmless.
	_ = b.Close()
}

func testCloseStopsReceivers(t *testing.T, h Harness) {
	b := makeBus(t, h, Options{})
	c := newCollector()
	done := make(chan error, 2)
	ctx := ctxTimeout(t)
	go func() { done <- b.ReceiveIngress(ctx, c.handler) }()
	go func() { done <- b.ReceiveDelivery(ctx, "closing", c.handler) }()
	// A message through each receiver proves both are running before Close.
	publishIngress(t, b, &bus.Message{ID: "in", Data: []byte("x")})
	awaitDeliverySubscription(t, b, "closing", c)
	waitFor(t, "the ingress message", func() bool { return c.count("in") == 1 })
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range 2 {
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, bus.ErrClosed) {
				t.Errorf("receive returned %v after Close, want nil or bus.ErrClosed", err)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("receive did not return within %v after Close", waitTimeout)
		}
	}
}

func testManyMessages(t *testing.T, h Harness) {
	const (
		n          = 2000
		publishers = 16
		parallel   = 4 // handlers that must be seen running at once
	)
	b := makeBus(t, h, Options{MaxOutstanding: 64, AckDeadline: 10 * time.Second})
	c := newCollector()
	var inFlight atomic.Int64
	together := make(chan struct{})
	var togetherOnce sync.Once
	var blocked atomic.Int64
	startIngress(t, b, func(ctx context.Context, m *bus.Message) error {
		cur := inFlight.Add(1)
		defer inFlight.Add(-1)
		if cur >= parallel {
			togetherOnce.Do(func() { close(together) })
		}
		// The first handlers wait until enough run at once, which proves
		// the handler is called concurrently.
		if blocked.Add(1) <= parallel {
			select {
			case <-together:
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(waitTimeout):
				t.Errorf("never saw %d handlers running at once", parallel)
			}
		}
		c.add(m)
		return nil
	})

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for p := range publishers {
		wg.Go(func() {
			ctx := ctxTimeout(t)
			data := make([]byte, 256)
			for i := p; i < n; i += publishers {
				if err := b.PublishIngress(ctx, &bus.Message{ID: fmt.Sprintf("many-%d", i), Data: data}); err != nil {
					errs <- fmt.Errorf("publish many-%d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, fmt.Sprintf("%d messages", n), func() bool { return c.distinct() == n })
	t.Logf("%d messages published and received in %v", n, time.Since(start).Round(time.Millisecond))
}

// testLogger sends the bus's warnings to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
