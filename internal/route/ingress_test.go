package route

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
)

// A routing event from the ingress topic is stored unless the API stored
// it already or it is ephemeral, then delivered here in process, addressed
// to every other instance holding a connection of its recipient (the
// delivery event carries the routing event's bytes as they are), or
// pushed; an undecodable or invalid one is permanent, a backend's failure
// is retried.
func TestRouteIngress(t *testing.T) {
	errDown := errors.New("down")
	cases := []struct {
		name      string
		msg       func(t *testing.T) *bus.Message
		storeErr  error
		presence  fakePresence
		busErr    error
		wantErr   bool
		permanent bool
		stored    int
		published []string
		local     int
		pushed    int
	}{
		{name: "offline: stored and pushed", msg: func(t *testing.T) *bus.Message { return ingress(t, false) },
			stored: 1, pushed: 1},
		{name: "online elsewhere: stored and addressed to each instance",
			msg: func(t *testing.T) *bus.Message { return ingress(t, false) }, presence: fakePresence{instances: []string{"b", "c"}},
			stored: 1, published: []string{"b", "c"}},
		{name: "online here: delivered in process",
			msg: func(t *testing.T) *bus.Message { return ingress(t, false) }, presence: fakePresence{instances: []string{"self", "c"}},
			stored: 1, published: []string{"c"}, local: 1},
		{name: "ephemeral offline: neither stored nor pushed",
			msg: func(t *testing.T) *bus.Message { return ingress(t, true) }},
		{name: "ephemeral online: delivered, not stored",
			msg: func(t *testing.T) *bus.Message { return ingress(t, true) }, presence: fakePresence{instances: []string{"c"}},
			published: []string{"c"}},
		{name: "undecodable: permanent", msg: func(*testing.T) *bus.Message { return &bus.Message{ID: "x", Data: []byte("{")} },
			wantErr: true, permanent: true},
		{name: "invalid envelope: permanent", msg: func(*testing.T) *bus.Message {
			return &bus.Message{ID: "x", Data: []byte(`{"id":"x","sender":"nope","recipient":"urn:a:b:c","created_at":"2026-01-01T00:00:00Z"}`)}
		}, wantErr: true, permanent: true},
		{name: "store down: retried", msg: func(t *testing.T) *bus.Message { return ingress(t, false) }, storeErr: errDown, wantErr: true},
		{name: "presence down: retried after storing", msg: func(t *testing.T) *bus.Message { return ingress(t, false) },
			presence: fakePresence{err: errDown}, wantErr: true, stored: 1},
		{name: "bus down: retried", msg: func(t *testing.T) *bus.Message { return ingress(t, false) },
			presence: fakePresence{instances: []string{"c"}}, busErr: errDown, wantErr: true, stored: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, b, n, l := &fakeStore{err: tc.storeErr}, &fakeBus{err: tc.busErr}, &fakeNotifier{}, &fakeLocal{}
			p := New(Options{Instance: "self", Sessions: l, Notifier: n, HandlerTimeout: time.Second}, st, tc.presence, b)
			m := tc.msg(t)
			err := handle(p, m)
			if (err != nil) != tc.wantErr || errors.Is(err, bus.ErrPermanent) != tc.permanent {
				t.Fatalf("err = %v, want error %v permanent %v", err, tc.wantErr, tc.permanent)
			}
			if len(st.envs) != tc.stored || len(n.got) != tc.pushed || len(l.got) != tc.local {
				t.Fatalf("stored %d pushed %d local %d, want %d %d %d", len(st.envs), len(n.got), len(l.got), tc.stored, tc.pushed, tc.local)
			}
			if len(b.out) != len(tc.published) {
				t.Fatalf("published %d, want %v", len(b.out), tc.published)
			}
			for i, pub := range b.out {
				if pub.instance != tc.published[i] ||
					pub.m.OrderingKey != pub.instance+"/urn:sm:user:b" || string(pub.m.Data) != string(m.Data) {
					t.Fatalf("delivery %d: %+v", i, pub)
				}
			}
			if tc.pushed == 1 && (n.got[0].MessageID != m.ID || n.got[0].Recipient != "urn:sm:user:b" || n.got[0].Type != "chat") {
				t.Fatalf("notification %+v", n.got[0])
			}
		})
	}
}

type countingStore struct {
	fakeStore
	calls int
}

func (s *countingStore) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	return s.fakeStore.PutMessages(ctx, envs)
}

type presenceByUser map[string][]string

func (p presenceByUser) Instances(_ context.Context, user string) ([]string, error) {
	if ins, ok := p[user]; ok && ins == nil {
		return nil, errors.New("presence down for " + user)
	}
	return p[user], nil
}

func message(t *testing.T, recipient string) *bus.Message {
	t.Helper()
	now := envelope.Now()
	env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:a",
		Recipient: recipient, Payload: []byte("c"), CreatedAt: now}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return &bus.Message{ID: env.ID, Data: b}
}

// A batch is stored with one store call; a poison message fails alone; once
// a recipient's routing fails, its later messages in the batch fail too (so
// a retry keeps their order) while other recipients' succeed.
func TestRouteIngressBatch(t *testing.T) {
	st := &countingStore{}
	b := &fakeBus{}
	pr := presenceByUser{"urn:sm:user:b": nil, "urn:sm:user:c": {"y"}}
	p := New(Options{Instance: "self", MaxBatch: 16, HandlerTimeout: time.Second}, st, pr, b)
	ms := []*bus.Message{
		message(t, "urn:sm:user:c"),
		{ID: "poison", Data: []byte("{")},
		message(t, "urn:sm:user:b"),
		message(t, "urn:sm:user:c"),
		message(t, "urn:sm:user:b"),
	}
	errs := p.routeIngress(context.Background(), ms)
	if st.calls != 1 || len(st.envs) != 4 {
		t.Fatalf("store calls %d with %d envelopes, want 1 with 4", st.calls, len(st.envs))
	}
	if errs[0] != nil || errs[3] != nil {
		t.Fatalf("c's messages failed: %v %v", errs[0], errs[3])
	}
	if !errors.Is(errs[1], bus.ErrPermanent) {
		t.Fatalf("poison: %v", errs[1])
	}
	if errs[2] == nil || errs[4] == nil || errors.Is(errs[2], bus.ErrPermanent) {
		t.Fatalf("b's messages: %v %v, want retryable errors", errs[2], errs[4])
	}
	if len(b.out) != 2 || b.out[0].instance != "y" || b.out[1].instance != "y" {
		t.Fatalf("published %+v", b.out)
	}
}

type batchBus struct {
	fakeBus
	calls [][]bus.Delivery
	err   error
}

func (b *batchBus) PublishDeliveries(_ context.Context, ds []bus.Delivery) error {
	b.calls = append(b.calls, ds)
	return b.err
}

// With a bus that publishes in batches, a batch's delivery events go out in
// one call, in order; if that call fails, exactly the messages that had
// remote deliveries are retried.
func TestRouteBatchPublishesDeliveriesTogether(t *testing.T) {
	pr := presenceByUser{"urn:sm:user:b": {"x"}, "urn:sm:user:c": {"self"}}
	for _, fail := range []bool{false, true} {
		b := &batchBus{}
		if fail {
			b.err = errors.New("down")
		}
		l := &fakeLocal{}
		p := New(Options{Instance: "self", Sessions: l, MaxBatch: 16, HandlerTimeout: time.Second}, &fakeStore{}, pr, b)
		ms := []*bus.Message{message(t, "urn:sm:user:b"), message(t, "urn:sm:user:c"), message(t, "urn:sm:user:b")}
		errs := p.routeIngress(context.Background(), ms)
		if len(b.calls) != 1 || len(b.calls[0]) != 2 || len(b.out) != 0 {
			t.Fatalf("publish calls %v, single publishes %d", b.calls, len(b.out))
		}
		for j, d := range b.calls[0] {
			if want := []*bus.Message{ms[0], ms[2]}[j]; d.Instance != "x" || string(d.Message.Data) != string(want.Data) {
				t.Fatalf("delivery %d: %+v", j, d)
			}
		}
		if len(l.got) != 1 {
			t.Fatalf("local deliveries %d, want 1", len(l.got))
		}
		if (errs[0] != nil) != fail || (errs[2] != nil) != fail || errs[1] != nil {
			t.Fatalf("fail=%v: errs %v", fail, errs)
		}
	}
}

// ackedStore reports every envelope as acknowledged before.
type ackedStore struct{ fakeStore }

func (s *ackedStore) PutMessages(_ context.Context, envs []*envelope.Envelope) ([]bool, error) {
	acked := make([]bool, len(envs))
	for i := range acked {
		acked[i] = true
	}
	return acked, nil
}

// A copy of a message its recipient already acknowledged (a redelivery,
// or a second publish of the same id) is handled without being routed
// again: no delivery event, no local delivery, no push.
func TestAcknowledgedCopyNotRoutedAgain(t *testing.T) {
	for _, online := range []bool{true, false} {
		b, n, l := &fakeBus{}, &fakeNotifier{}, &fakeLocal{}
		pr := presenceByUser{}
		if online {
			pr["urn:sm:user:b"] = []string{"self", "other"}
		}
		p := New(Options{Instance: "self", Sessions: l, Notifier: n, HandlerTimeout: time.Second}, &ackedStore{}, pr, b)
		if err := handle(p, message(t, "urn:sm:user:b")); err != nil {
			t.Fatalf("online %v: %v", online, err)
		}
		if len(b.out) != 0 || len(l.got) != 0 || len(n.got) != 0 {
			t.Fatalf("online %v: published %d, local %d, pushed %d; want nothing", online, len(b.out), len(l.got), len(n.got))
		}
	}
}

// An ingress message the API stored already (AttrStored) is routed
// without a second store call, and marked routed.
func TestStoredMessageOnlyRouted(t *testing.T) {
	st := &countingStore{}
	n := &fakeNotifier{}
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second}, st, presenceByUser{}, &fakeBus{})
	m := message(t, "urn:sm:user:b")
	m.Attributes = map[string]string{bus.AttrStored: "1"}
	if err := handle(p, m); err != nil {
		t.Fatal(err)
	}
	if st.calls != 0 {
		t.Fatalf("stored again: %d store calls", st.calls)
	}
	if !st.isRouted(m.ID) || len(n.got) != 1 {
		t.Fatalf("routed mark %v, pushes %d; want marked and one push", st.isRouted(m.ID), len(n.got))
	}
}

// nopLocal takes local deliveries and drops them.
type nopLocal struct{}

func (nopLocal) DeliverEncoded(context.Context, *envelope.Envelope, []byte) {}

// BenchmarkRouteIngressBatch routes batches of 64 stored messages (the
// API's routing events, from the ingress topic) to recipients connected to
// this instance: decode (the payload left encoded), presence, in-process
// delivery, one routed mark per batch.
func BenchmarkRouteIngressBatch(b *testing.B) {
	const size = 64
	pr := presenceByUser{}
	ms := make([]*bus.Message, size)
	for i := range ms {
		to := fmt.Sprintf("urn:sm:user:u%d", i)
		pr[to] = []string{"self"}
		now := envelope.Now()
		env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:a", Recipient: to, Payload: make([]byte, 256), CreatedAt: now}
		data, err := envelope.Marshal(env)
		if err != nil {
			b.Fatal(err)
		}
		ms[i] = &bus.Message{ID: env.ID, Data: data, OrderingKey: to, Attributes: map[string]string{bus.AttrStored: "1"}}
	}
	p := New(Options{Instance: "self", Sessions: nopLocal{}, HandlerTimeout: time.Second}, nopStore{}, pr, &fakeBus{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		for _, err := range p.routeIngress(ctx, ms) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "msgs/s")
}

// nopStore stores nothing.
type nopStore struct{ Store }

func (nopStore) PutMessages(context.Context, []*envelope.Envelope) ([]bool, error) { return nil, nil }
func (nopStore) MarkRouted(context.Context, []string) error                        { return nil }
func (nopStore) PendingTotal(context.Context) (int64, error)                       { return 0, nil }
func (nopStore) Stored(context.Context, []string) ([]string, error)                { return nil, nil }
func (nopStore) Unrouted(context.Context, time.Time, int) ([]*envelope.Envelope, error) {
	return nil, nil
}

// batchPresenceFake counts its calls; InstancesOf fails while failBatch.
type batchPresenceFake struct {
	presenceByUser
	mu               sync.Mutex
	single, batches  int
	failBatch        bool
	lastBatchUserCnt int
}

func (p *batchPresenceFake) Instances(ctx context.Context, user string) ([]string, error) {
	p.mu.Lock()
	p.single++
	p.mu.Unlock()
	return p.presenceByUser.Instances(ctx, user)
}

func (p *batchPresenceFake) InstancesOf(ctx context.Context, users []string) ([][]string, error) {
	p.mu.Lock()
	p.batches++
	p.lastBatchUserCnt = len(users)
	fail := p.failBatch
	p.mu.Unlock()
	if fail {
		return nil, errors.New("batch lookup failed")
	}
	out := make([][]string, len(users))
	for i, u := range users {
		out[i] = p.presenceByUser[u]
	}
	return out, nil
}

// A batch's recipients are looked up with one call when the registry takes
// many at once; when that call fails, each is looked up alone, and a
// recipient whose lookup fails holds up only its own messages.
func TestRouteBatchLooksUpPresenceOnce(t *testing.T) {
	pr := &batchPresenceFake{presenceByUser: presenceByUser{"urn:sm:user:x": {"c"}, "urn:sm:user:y": {}, "urn:sm:user:z": {"c"}}}
	b, n := &fakeBus{}, &fakeNotifier{}
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second}, &fakeStore{}, pr, b)
	ms := []*bus.Message{message(t, "urn:sm:user:x"), message(t, "urn:sm:user:y"), message(t, "urn:sm:user:x"), message(t, "urn:sm:user:z")}
	for i, err := range p.routeIngress(context.Background(), ms) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if pr.batches != 1 || pr.lastBatchUserCnt != 3 || pr.single != 0 {
		t.Fatalf("%d batch lookups of %d users and %d single ones, want 1 of 3 and none", pr.batches, pr.lastBatchUserCnt, pr.single)
	}
	if len(b.out) != 3 || len(n.notifications()) != 1 {
		t.Fatalf("%d deliveries published and %d pushes, want 3 and 1", len(b.out), len(n.notifications()))
	}

	pr.failBatch = true
	pr.presenceByUser["urn:sm:user:down"] = nil // its lookup fails
	ms = []*bus.Message{message(t, "urn:sm:user:down"), message(t, "urn:sm:user:z"), message(t, "urn:sm:user:down")}
	errs := p.routeIngress(context.Background(), ms)
	if errs[0] == nil || errs[2] == nil || errs[1] != nil {
		t.Fatalf("errors %v, want the failed recipient's two only", errs)
	}
	if pr.single != 2 {
		t.Fatalf("%d single lookups after the batch lookup failed, want 2", pr.single)
	}
}
