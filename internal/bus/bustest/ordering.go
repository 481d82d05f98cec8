package bustest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// Ordering keys. bus.Message.OrderingKey promises that a receiver hands the
// messages of one key to its handler one at a time, in publish order, while
// messages of different keys may be handled concurrently. The promise covers
// messages handled successfully on their first attempt: a nacked message is
// redelivered later, possibly after messages of its key that were published
// after it. The ordering tests therefore never fail a handler, and they ask
// for an ack deadline long enough that no message is redelivered for being
// slow.

const (
	orderingKeyCount = 5
	orderingPerKey   = 200
	// orderingWork is how long a handler of the ordering tests holds its
	// message: simulated work that gives a second handler of the same key,
	// if a receiver wrongly started one, the time to be seen overlapping.
	orderingWork = 200 * time.Microsecond
)

// orderingOptions let a receiver run many handlers at once, so that keys are
// only serialised by the bus's ordering, not by a lack of concurrency.
var orderingOptions = Options{MaxOutstanding: 64, AckDeadline: 60 * time.Second}

// orderedRef is where one message stands in its key's publish order.
type orderedRef struct {
	key string
	seq int
}

// orderChecker is a handler that checks the ordering-key promise: per key,
// publish order and no two handlers at once.
type orderChecker struct {
	refs map[string]orderedRef // by message ID; read-only after construction
	msgs []*bus.Message        // in publish order: keys interleaved

	mu         sync.Mutex
	inFlight   map[string]int   // handlers running, per key
	seen       map[string][]int // sequence numbers handled, per key, in handling order
	problems   []string
	handled    int
	running    int // handlers running, all keys
	maxRunning int
}

// newOrderChecker makes orderingPerKey messages for each of orderingKeyCount
// keys, interleaved (key 0 #0, key 1 #0, ..., key 0 #1, ...).
func newOrderChecker(prefix string) *orderChecker {
	c := &orderChecker{
		refs:     map[string]orderedRef{},
		inFlight: map[string]int{},
		seen:     map[string][]int{},
	}
	for i := range orderingPerKey {
		for k := range orderingKeyCount {
			key := fmt.Sprintf("urn:routing:test:recipient-%d", k)
			m := &bus.Message{
				ID:          fmt.Sprintf("%s-k%d-%03d", prefix, k, i),
				Data:        []byte(strconv.Itoa(i)),
				OrderingKey: key,
			}
			c.refs[m.ID] = orderedRef{key: key, seq: i}
			c.msgs = append(c.msgs, m)
		}
	}
	return c
}

// problemf records a violation; only the first few are kept.
func (c *orderChecker) problemf(format string, args ...any) {
	if len(c.problems) < 20 {
		c.problems = append(c.problems, fmt.Sprintf(format, args...))
	}
}

// handler checks and acks one message. Messages it did not make (probes)
// are acked and ignored.
func (c *orderChecker) handler(ctx context.Context, m *bus.Message) error {
	ref, ok := c.refs[m.ID]
	if !ok {
		return nil
	}
	c.mu.Lock()
	c.inFlight[ref.key]++
	if n := c.inFlight[ref.key]; n > 1 {
		c.problemf("%s handled while %d other handler(s) of key %s were running", m.ID, n-1, ref.key)
	}
	c.running++
	c.maxRunning = max(c.maxRunning, c.running)
	if m.OrderingKey != ref.key {
		c.problemf("%s received with OrderingKey %q, published with %q", m.ID, m.OrderingKey, ref.key)
	}
	if m.DeliveryAttempt != 1 {
		c.problemf("%s delivered on attempt %d though no handler failed", m.ID, m.DeliveryAttempt)
	}
	c.seen[ref.key] = append(c.seen[ref.key], ref.seq)
	c.mu.Unlock()

	work := time.NewTimer(orderingWork)
	select {
	case <-work.C:
	case <-ctx.Done():
		work.Stop()
	}

	c.mu.Lock()
	c.inFlight[ref.key]--
	c.running--
	c.handled++
	c.mu.Unlock()
	return nil // never nack: ordering is promised for first attempts only
}

func (c *orderChecker) handledCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.handled
}

// check reports every violation seen, and any key whose messages were not
// handled exactly once each, in publish order.
func (c *orderChecker) check(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.problems {
		t.Error(p)
	}
	want := make([]int, orderingPerKey)
	for i := range want {
		want[i] = i
	}
	for k := range orderingKeyCount {
		key := fmt.Sprintf("urn:routing:test:recipient-%d", k)
		got := c.seen[key]
		if slices.Equal(got, want) {
			continue
		}
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Errorf("key %s: handled %d messages, not in publish order 0..%d: first divergence at position %d (got %s)",
			key, len(got), orderingPerKey-1, i, excerpt(got, i))
	}
	t.Logf("%d messages over %d keys; at most %d handlers ran at once", c.handled, orderingKeyCount, c.maxRunning)
}

// excerpt shows s around position i.
func excerpt(s []int, i int) string {
	lo, hi := max(0, i-3), min(len(s), i+4)
	parts := make([]string, 0, hi-lo)
	for _, v := range s[lo:hi] {
		parts = append(parts, strconv.Itoa(v))
	}
	return fmt.Sprintf("...[%s]... from position %d", strings.Join(parts, " "), lo)
}

// waitProgress polls count until it reaches n. It fails the test when count
// stays unchanged for waitTimeout: an engine that hands one key's messages
// over slowly passes as long as it keeps making progress.
func waitProgress(t *testing.T, what string, n int, count func() int) {
	t.Helper()
	last, lastChange := count(), time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for last < n {
		<-tick.C
		if cur := count(); cur != last {
			last, lastChange = cur, time.Now()
			continue
		}
		if time.Since(lastChange) > waitTimeout {
			t.Fatalf("waiting for %s: stuck at %d of %d for %v", what, last, n, waitTimeout)
		}
	}
}

// testOrderingIngress publishes every message first, so that the receiver
// finds many messages of each key at once.
func testOrderingIngress(t *testing.T, h Harness) {
	b := makeBus(t, h, orderingOptions)
	c := newOrderChecker("ord-in")
	start := time.Now()
	for _, m := range c.msgs { // one goroutine: publish order is this order
		publishIngress(t, b, m)
	}
	startIngress(t, b, c.handler)
	waitProgress(t, "every ordered ingress message", len(c.msgs), c.handledCount)
	c.check(t)
	t.Logf("published and handled in %v", time.Since(start).Round(time.Millisecond))
}

// testOrderingDelivery publishes delivery events to one instance while it
// receives them.
func testOrderingDelivery(t *testing.T, h Harness) {
	const instance = "ordered"
	b := makeBus(t, h, orderingOptions)
	c := newOrderChecker("ord-dl")
	probes := newCollector()
	startDelivery(t, b, instance, func(ctx context.Context, m *bus.Message) error {
		if strings.HasPrefix(m.ID, "probe-") {
			return probes.handler(ctx, m)
		}
		return c.handler(ctx, m)
	})
	awaitDeliverySubscription(t, b, instance, probes)
	start := time.Now()
	for _, m := range c.msgs { // one goroutine: publish order is this order
		publishDelivery(t, b, instance, m)
	}
	waitProgress(t, "every ordered delivery event", len(c.msgs), c.handledCount)
	c.check(t)
	t.Logf("published and handled in %v", time.Since(start).Round(time.Millisecond))
}
