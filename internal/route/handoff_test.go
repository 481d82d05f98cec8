package route

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// chanLocal hands what is delivered in process to a channel.
type chanLocal chan *envelope.Envelope

func (l chanLocal) DeliverEncoded(_ context.Context, e *envelope.Envelope, _ []byte) { l <- e }

// stored returns the routing event Accept hands over for a stored
// envelope to recipient, and the envelope.
func stored(t *testing.T, recipient string) (Event, *envelope.Envelope) {
	t.Helper()
	now := envelope.Now()
	env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:a", Recipient: recipient,
		Type: "chat", Payload: []byte("c"), CreatedAt: now}
	data, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return Event{Envelope: env, Data: data, Stored: true}, env
}

// offer hands p n stored messages to recipient and returns their ids.
func offer(t *testing.T, p *Core, recipient string, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		ev, env := stored(t, recipient)
		if !p.offer(ev) {
			t.Fatal("hand-off refused with room left")
		}
		ids = append(ids, env.ID)
	}
	return ids
}

// runHandoff starts p.runHandoff and returns a function that stops it and
// waits for it to return.
func runHandoff(p *Core) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.runHandoff(ctx) }()
	return func() { cancel(); <-done }
}

// Handed-off messages are routed in the order they were handed over,
// without a store write (the API stored them) and without the ingress
// topic: in process to local connections, over the bus to other instances,
// a push for offline recipients.
func TestLocalHandoffRoutesInOrder(t *testing.T) {
	st, b, n, l := &fakeStore{}, &fakeBus{}, &fakeNotifier{}, make(chanLocal, 100)
	m := telemetry.NewMetrics()
	p := New(Options{Instance: "self", Sessions: l, Notifier: n, HandlerTimeout: time.Second, MaxBatch: 8, HandoffQueue: 100, Metrics: m},
		st, presenceByUser{"urn:sm:user:here": {"self"}, "urn:sm:user:there": {"c"}, "urn:sm:user:off": {}}, b)
	stop := runHandoff(p)
	want := offer(t, p, "urn:sm:user:here", 20)
	there, thereEnv := stored(t, "urn:sm:user:there")
	off, offEnv := stored(t, "urn:sm:user:off")
	if !p.offer(there) || !p.offer(off) {
		t.Fatal("hand-off refused with room left")
	}
	for i, id := range want {
		if got := <-l; got.ID != id {
			t.Fatalf("local delivery %d is %s, want %s", i, got.ID, id)
		}
	}
	stop()
	if len(st.envs) != 0 {
		t.Errorf("%d store writes; the API stored these already", len(st.envs))
	}
	if len(b.out) != 1 || b.out[0].instance != "c" || b.out[0].m.ID != thereEnv.ID+".c" {
		t.Errorf("deliveries published: %+v", b.out)
	}
	if got := n.notifications(); len(got) != 1 || got[0].MessageID != offEnv.ID {
		t.Errorf("pushes: %+v", got)
	}
	if got := testutil.ToFloat64(m.IngressLocal.WithLabelValues("routed")); got != 22 || len(b.requeued()) != 0 {
		t.Errorf("routed %v requeued %d, want 22 and 0", got, len(b.requeued()))
	}
}

// A full hand-off refuses at once (the API then publishes on the ingress
// topic), and takes again once it has room.
func TestLocalHandoffFull(t *testing.T) {
	m := telemetry.NewMetrics()
	p := New(Options{Instance: "self", Sessions: make(chanLocal, 10), HandlerTimeout: time.Second, HandoffQueue: 2, Metrics: m},
		&fakeStore{}, presenceByUser{}, &fakeBus{})
	for i := range 3 {
		ev, _ := stored(t, "urn:sm:user:b")
		if got, want := p.offer(ev), i < 2; got != want {
			t.Fatalf("offer %d: %v, want %v", i, got, want)
		}
	}
	if got := testutil.ToFloat64(m.IngressLocal.WithLabelValues("full")); got != 1 {
		t.Errorf("full = %v, want 1", got)
	}
	stop := runHandoff(p)
	stop()
	ev, _ := stored(t, "urn:sm:user:b")
	if p.offer(ev) {
		t.Error("a stopped hand-off took a message")
	}
	if got := testutil.ToFloat64(m.IngressLocal.WithLabelValues("routed")); got != 2 {
		t.Errorf("routed = %v, want the 2 handed over before the stop", got)
	}
}

// What is handed over before the stop is routed before RunLocal returns.
func TestLocalHandoffDrainsOnStop(t *testing.T) {
	st := &fakeStore{}
	n := &fakeNotifier{}
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second, MaxBatch: 4, HandoffQueue: 64, MarkDelay: time.Hour},
		st, presenceByUser{}, &fakeBus{})
	ids := offer(t, p, "urn:sm:user:b", 50)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.runHandoff(ctx) // stopped before it starts: drains what is waiting
	if got := n.notifications(); len(got) != len(ids) {
		t.Fatalf("%d of %d routed before the stop returned", len(got), len(ids))
	}
	var wg sync.WaitGroup
	mctx, mcancel := context.WithCancel(context.Background())
	mcancel()
	wg.Go(func() { p.writeMarksUntil(mctx) })
	wg.Wait()
	for _, id := range ids {
		if !st.isRouted(id) {
			t.Fatalf("%s not marked routed", id)
		}
	}
}

// A message whose routing fails here goes to the ingress topic, to be
// retried there, with its stored attribute; the others of the batch are
// routed.
func TestLocalHandoffRequeuesFailures(t *testing.T) {
	m := telemetry.NewMetrics()
	n, b := &fakeNotifier{}, &fakeBus{}
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second, MaxBatch: 8, HandoffQueue: 8, Metrics: m},
		&fakeStore{}, presenceByUser{"urn:sm:user:down": nil, "urn:sm:user:ok": {}}, b)
	bad, badEnv := stored(t, "urn:sm:user:down")
	good, goodEnv := stored(t, "urn:sm:user:ok")
	p.offer(bad)
	p.offer(good)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.runHandoff(ctx)
	requeued := b.requeued()
	if len(requeued) != 1 || requeued[0].ID != badEnv.ID || requeued[0].Attributes[bus.AttrStored] != "1" ||
		string(requeued[0].Data) != string(bad.Data) || requeued[0].OrderingKey != badEnv.Recipient {
		t.Fatalf("requeued %+v, want the failed message only", requeued)
	}
	if got := n.notifications(); len(got) != 1 || got[0].MessageID != goodEnv.ID {
		t.Fatalf("pushes %+v, want the routed message's", got)
	}
	if got := testutil.ToFloat64(m.IngressLocal.WithLabelValues("requeued")); got != 1 {
		t.Errorf("requeued = %v, want 1", got)
	}
	// When the ingress topic refuses it too, the message is left to the
	// sweep, and counted as such.
	b.mu.Lock()
	b.ingressErr = errors.New("bus down")
	b.mu.Unlock()
	p.handoff.closed = false
	bad2, _ := stored(t, "urn:sm:user:down")
	p.offer(bad2)
	p.runHandoff(ctx)
	if got := testutil.ToFloat64(m.RoutingDeferred); got != 1 {
		t.Errorf("routing deferred = %v, want 1", got)
	}
}

// recoveringBus is a fakeBus that announces its recovery (bus.Bus's
// OnRecovered) when told to.
type recoveringBus struct {
	*fakeBus
	mu  sync.Mutex
	fns map[int]func()
	n   int
}

func (b *recoveringBus) OnRecovered(fn func()) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fns == nil {
		b.fns = map[int]func(){}
	}
	id := b.n
	b.n++
	b.fns[id] = fn
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.fns, id)
	}
}

// recover clears the bus's errors and announces its recovery.
func (b *recoveringBus) recover() {
	b.fakeBus.mu.Lock()
	b.fakeBus.err, b.fakeBus.ingressErr = nil, nil
	b.fakeBus.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, fn := range b.fns {
		go fn()
	}
}

func (b *recoveringBus) listeners() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.fns)
}

// While the bus is down, what the hand-off fails to route (its delivery
// events cannot be published) is held, neither dropped nor left to the
// sweep, and the hand-off goes on routing the rest; when the bus
// recovers, the held messages are routed at once, in order.
func TestLocalHandoffHoldsWhileTheBusIsDown(t *testing.T) {
	m := telemetry.NewMetrics()
	b := &recoveringBus{fakeBus: &fakeBus{err: errors.New("bus down"), ingressErr: errors.New("bus down")}}
	n := &fakeNotifier{}
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second, MaxBatch: 4, HandoffQueue: 64, Metrics: m},
		&fakeStore{}, presenceByUser{"urn:sm:user:far": {"other"}, "urn:sm:user:off": {}}, b)
	stop := runHandoff(p)
	defer stop()
	ids := offer(t, p, "urn:sm:user:far", 10)
	offline := offer(t, p, "urn:sm:user:off", 1) // needs no bus: routed at once
	waitFor(t, "the offline recipient's push", func() bool { return len(n.notifications()) == 1 })
	if got := n.notifications()[0].MessageID; got != offline[0] {
		t.Fatalf("push for %s, want %s", got, offline[0])
	}
	waitFor(t, "the held messages' retry loop", func() bool { return b.listeners() > 0 })
	if got := testutil.ToFloat64(m.RoutingDeferred); got != 0 {
		t.Fatalf("%v messages left to the sweep while the bus is down, want none", got)
	}
	b.recover()
	// Each is routed again (its delivery event published) or handed to
	// the ingress topic, as one batch, for any pipeline instance to route.
	onBus := func() map[string]bool {
		b.fakeBus.mu.Lock()
		defer b.fakeBus.mu.Unlock()
		seen := map[string]bool{}
		for _, o := range b.fakeBus.out {
			seen[o.m.ID] = true
		}
		for _, m := range b.fakeBus.ingress {
			seen[m.ID+".other"] = true
		}
		return seen
	}
	waitFor(t, "the held messages on the bus", func() bool {
		seen := onBus()
		for _, id := range ids {
			if !seen[id+".other"] {
				return false
			}
		}
		return true
	})
	if got := testutil.ToFloat64(m.RoutingDeferred); got != 0 {
		t.Errorf("%v messages left to the sweep, want none", got)
	}
}

// stuckBus is a fakeBus whose delivery publishes wait until release is
// closed (a publish whose acknowledgement does not come).
type stuckBus struct {
	*fakeBus
	release chan struct{}
}

func (b *stuckBus) PublishDeliveries(ctx context.Context, ds []bus.Delivery) error {
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.fakeBus.PublishDeliveries(ctx, ds)
}

// One stuck publish holds up only the recipients of its lane: the
// hand-off goes on routing the others meanwhile.
func TestLocalHandoffNotStalledByOneStuckPublish(t *testing.T) {
	b := &stuckBus{fakeBus: &fakeBus{}, release: make(chan struct{})}
	n := &fakeNotifier{}
	const far = "urn:sm:user:far"
	// Offline recipients in the other lanes.
	var offline []string
	for i := 0; len(offline) < handoffLanes-1; i++ {
		u := fmt.Sprintf("urn:sm:user:off-%d", i)
		if fnv32(u)%handoffLanes != fnv32(far)%handoffLanes && !slices.ContainsFunc(offline, func(o string) bool { return fnv32(o)%handoffLanes == fnv32(u)%handoffLanes }) {
			offline = append(offline, u)
		}
	}
	where := presenceByUser{far: {"other"}} // the others: offline
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: 30 * time.Second, MaxBatch: 4, HandoffQueue: 64}, &fakeStore{}, where, b)
	stop := runHandoff(p)
	defer func() { close(b.release); stop() }()
	offer(t, p, far, 1)
	var want []string
	for _, u := range offline {
		want = append(want, offer(t, p, u, 2)...)
	}
	waitFor(t, "the other lanes' recipients routed while one publish is stuck", func() bool { return len(n.notifications()) == len(want) })
	b.fakeBus.mu.Lock()
	defer b.fakeBus.mu.Unlock()
	if len(b.fakeBus.out) != 0 {
		t.Fatal("the stuck publish went through")
	}
}
