package pipeline

import (
	"context"
	"errors"
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

func (l chanLocal) Deliver(_ context.Context, e *envelope.Envelope) { l <- e }

// stored returns the routing event the API makes of a stored envelope for
// recipient, and the envelope.
func stored(t *testing.T, recipient string) (*bus.Message, *envelope.Envelope) {
	t.Helper()
	now := envelope.Now()
	env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:a", Recipient: recipient,
		Type: "chat", Payload: []byte("c"), CreatedAt: now}
	data, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return &bus.Message{ID: env.ID, Data: data, OrderingKey: recipient, Attributes: map[string]string{bus.AttrStored: "1"}}, env
}

// offer hands p n stored messages to recipient and returns their ids.
func offer(t *testing.T, p *Pipeline, recipient string, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		msg, env := stored(t, recipient)
		if !p.Offer(msg, env) {
			t.Fatal("hand-off refused with room left")
		}
		ids = append(ids, env.ID)
	}
	return ids
}

// runLocal starts p.RunLocal and returns a function that stops it and
// waits for it to return.
func runLocal(p *Pipeline) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.RunLocal(ctx) }()
	return func() { cancel(); <-done }
}

// Handed-off messages are routed in the order they were handed over,
// without a store write (the API stored them) and without the ingress
// topic: in process to local connections, over the bus to other instances,
// a push for offline recipients.
func TestLocalHandoffRoutesInOrder(t *testing.T) {
	st, b, n, l := &fakeStore{}, &fakeBus{}, &fakeNotifier{}, make(chanLocal, 100)
	m := telemetry.NewMetrics()
	requeued := 0
	p := New(Options{Instance: "self", Local: l, Notifier: n, HandlerTimeout: time.Second, MaxBatch: 8, LocalQueue: 100,
		Requeue: func(context.Context, *bus.Message) error { requeued++; return nil }, Metrics: m},
		st, presenceByUser{"urn:sm:user:here": {"self"}, "urn:sm:user:there": {"c"}, "urn:sm:user:off": {}}, b)
	stop := runLocal(p)
	want := offer(t, p, "urn:sm:user:here", 20)
	there, thereEnv := stored(t, "urn:sm:user:there")
	off, offEnv := stored(t, "urn:sm:user:off")
	if !p.Offer(there, thereEnv) || !p.Offer(off, offEnv) {
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
	if got := testutil.ToFloat64(m.IngressLocal.WithLabelValues("routed")); got != 22 || requeued != 0 {
		t.Errorf("routed %v requeued %d, want 22 and 0", got, requeued)
	}
}

// A full hand-off refuses at once (the API then publishes on the ingress
// topic), and takes again once it has room.
func TestLocalHandoffFull(t *testing.T) {
	m := telemetry.NewMetrics()
	p := New(Options{Instance: "self", Local: make(chanLocal, 10), HandlerTimeout: time.Second, LocalQueue: 2, Metrics: m},
		&fakeStore{}, presenceByUser{}, &fakeBus{})
	for i := range 3 {
		msg, env := stored(t, "urn:sm:user:b")
		if got, want := p.Offer(msg, env), i < 2; got != want {
			t.Fatalf("offer %d: %v, want %v", i, got, want)
		}
	}
	if got := testutil.ToFloat64(m.IngressLocal.WithLabelValues("full")); got != 1 {
		t.Errorf("full = %v, want 1", got)
	}
	stop := runLocal(p)
	stop()
	msg, env := stored(t, "urn:sm:user:b")
	if p.Offer(msg, env) {
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
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second, MaxBatch: 4, LocalQueue: 64, MarkDelay: time.Hour},
		st, presenceByUser{}, &fakeBus{})
	ids := offer(t, p, "urn:sm:user:b", 50)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.RunLocal(ctx) // stopped before it starts: drains what is waiting
	if got := n.notifications(); len(got) != len(ids) {
		t.Fatalf("%d of %d routed before the stop returned", len(got), len(ids))
	}
	var wg sync.WaitGroup
	mctx, mcancel := context.WithCancel(context.Background())
	mcancel()
	wg.Go(func() { p.WriteMarks(mctx) })
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
	var mu sync.Mutex
	var requeued []*bus.Message
	requeue := func(_ context.Context, msg *bus.Message) error {
		mu.Lock()
		defer mu.Unlock()
		requeued = append(requeued, msg)
		return nil
	}
	n := &fakeNotifier{}
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second, MaxBatch: 8, LocalQueue: 8, Requeue: requeue, Metrics: m},
		&fakeStore{}, presenceByUser{"urn:sm:user:down": nil, "urn:sm:user:ok": {}}, &fakeBus{})
	bad, badEnv := stored(t, "urn:sm:user:down")
	good, goodEnv := stored(t, "urn:sm:user:ok")
	p.Offer(bad, badEnv)
	p.Offer(good, goodEnv)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.RunLocal(ctx)
	if len(requeued) != 1 || requeued[0].ID != badEnv.ID || requeued[0].Attributes[bus.AttrStored] != "1" {
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
	p.o.Requeue = func(context.Context, *bus.Message) error { return errors.New("bus down") }
	p.local.closed = false
	bad2, bad2Env := stored(t, "urn:sm:user:down")
	p.Offer(bad2, bad2Env)
	p.RunLocal(ctx)
	if got := testutil.ToFloat64(m.RoutingDeferred); got != 1 {
		t.Errorf("routing deferred = %v, want 1", got)
	}
}
