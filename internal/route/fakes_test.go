package route

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/push"
)

// fakeStore keeps envelopes and routed marks in memory; what routing
// does not use it leaves to the nil Store (a call panics).
type fakeStore struct {
	Store
	mu     sync.Mutex
	err    error
	envs   []*envelope.Envelope
	routed map[string]bool
	acked  map[string]bool
}

func (s *fakeStore) Stored(_ context.Context, ids []string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := map[string]bool{}
	for _, e := range s.envs {
		in[e.ID] = !s.acked[e.ID]
	}
	var out []string
	for _, id := range ids {
		if in[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

func (s *fakeStore) ack(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acked == nil {
		s.acked = map[string]bool{}
	}
	s.acked[id] = true
}

func (s *fakeStore) PutMessages(_ context.Context, envs []*envelope.Envelope) ([]bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	s.envs = append(s.envs, envs...)
	return nil, nil
}

func (s *fakeStore) MarkRouted(_ context.Context, ids []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.routed == nil {
		s.routed = map[string]bool{}
	}
	for _, id := range ids {
		s.routed[id] = true
	}
	return nil
}

func (s *fakeStore) Unrouted(_ context.Context, before time.Time, limit int) ([]*envelope.Envelope, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*envelope.Envelope
	for _, e := range s.envs {
		if !s.routed[e.ID] && e.CreatedAt.Before(before) && len(out) < limit {
			out = append(out, e)
		}
	}
	return out, nil
}

func (s *fakeStore) PendingTotal(context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.envs)), nil
}

func (s *fakeStore) isRouted(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.routed[id]
}

type fakePresence struct {
	instances []string
	err       error
}

func (p fakePresence) Instances(context.Context, string) ([]string, error) { return p.instances, p.err }

type published struct {
	instance string
	m        *bus.Message
}

// fakeBus records the delivery events published (failing with err) and
// the routing events published on the ingress topic (failing with
// ingressErr).
type fakeBus struct {
	mu         sync.Mutex
	out        []published
	err        error
	ingress    []*bus.Message
	ingressErr error
}

func (b *fakeBus) ReceiveIngressBatch(context.Context, int, bus.BatchHandler) error { return nil }
func (b *fakeBus) PublishIngress(_ context.Context, m *bus.Message) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ingressErr != nil {
		return b.ingressErr
	}
	b.ingress = append(b.ingress, m)
	return nil
}

// requeued returns the routing events published on the ingress topic.
func (b *fakeBus) requeued() []*bus.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*bus.Message(nil), b.ingress...)
}
func (b *fakeBus) PublishDeliveries(_ context.Context, ds []bus.Delivery) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	for _, d := range ds {
		b.out = append(b.out, published{d.Instance, d.Message})
	}
	return nil
}

type fakeNotifier struct {
	mu  sync.Mutex
	got []push.Notification
}

func (n *fakeNotifier) Notify(x push.Notification) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.got = append(n.got, x)
}

func (n *fakeNotifier) notifications() []push.Notification {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]push.Notification(nil), n.got...)
}

// fakeLocal records what is delivered to this instance's sessions, and
// the wire forms.
type fakeLocal struct {
	got  []*envelope.Envelope
	wire [][]byte
}

func (l *fakeLocal) DeliverEncoded(_ context.Context, e *envelope.Envelope, wire []byte) {
	l.got = append(l.got, e)
	l.wire = append(l.wire, wire)
}

// handle routes one routing event received from the ingress topic.
func handle(c *Core, m *bus.Message) error {
	return c.routeIngress(context.Background(), []*bus.Message{m})[0]
}

func ingress(t *testing.T, ephemeral bool) *bus.Message {
	t.Helper()
	now := envelope.Now()
	env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b",
		Type: "chat", Payload: []byte("c"), Ephemeral: ephemeral, CreatedAt: now}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return &bus.Message{ID: env.ID, Data: b, DeliveryAttempt: 1}
}
