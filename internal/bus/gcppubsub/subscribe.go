package gcppubsub

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Subscribe opens the shared ingress subscription, or instance's delivery
// subscription (created or verified here with its topic, and owned by this
// Driver; under LegacySharedDelivery together with its filtered
// subscription on the shared topic, both read as one). A streaming pull
// runs until Close, with at most MaxOutstanding messages received and
// unsettled per subscription; the client extends their leases by
// AckDeadline meanwhile, so that the messages of a receiver that dies
// return AckDeadline after its last extension at the latest.
func (b *Driver) Subscribe(ctx context.Context, queue, instance string) (driver.Subscription, error) {
	if b.isClosed() {
		return nil, driver.ErrClosed
	}
	var subIDs, active []string
	switch queue {
	case driver.QueueIngress:
		subIDs = []string{b.cfg.IngressSubscription}
	case driver.QueueDelivery:
		var err error
		if subIDs, err = b.ownDelivery(ctx, instance); err != nil {
			return nil, err
		}
		b.mu.Lock()
		for _, id := range subIDs {
			name := b.subscriptionName(id)
			active = append(active, name)
			b.activeDeliverySubscription[name]++
		}
		b.mu.Unlock()
	default:
		return nil, fmt.Errorf("gcppubsub: subscribe: unknown queue %q", queue)
	}
	rctx, cancel := context.WithCancel(context.Background())
	s := &subscription{
		b:      b,
		queue:  queue,
		subID:  strings.Join(subIDs, "+"),
		active: active,
		msgs:   make(chan *pubsub.Message, b.cfg.MaxOutstanding),
		closed: make(chan struct{}),
		broken: make(chan struct{}),
		cancel: cancel,
	}
	subs := make([]*pubsub.Subscriber, len(subIDs))
	for i, id := range subIDs {
		sub := b.client.Subscriber(id)
		sub.ReceiveSettings.MaxOutstandingMessages = b.cfg.MaxOutstanding
		sub.ReceiveSettings.NumGoroutines = b.cfg.Streams
		// The lease of every received message is AckDeadline, on the stream
		// and on each extension. Left to itself the client leases messages on
		// a stream for 60s and then extends them by the 99th percentile of its
		// processing times, up to 10 minutes: messages held by an instance
		// that dies would stay leased that long, and with them every later
		// message of their ordering keys.
		sub.ReceiveSettings.MinDurationPerAckExtension = b.cfg.AckDeadline
		sub.ReceiveSettings.MaxDurationPerAckExtension = b.cfg.AckDeadline
		subs[i] = sub
	}
	go s.run(rctx, subs)
	return s, nil
}

// subscription hands the streaming pulls' messages to Receive through a
// channel. The client calls back one message of an ordering key at a time;
// the callback returns once the message is queued, so the order of the
// channel is the key's order (within each subscription read).
type subscription struct {
	b      *Driver
	queue  string
	subID  string   // the subscription ids read, for errors
	active []string // the delivery subscriptions' names, for the setup check
	msgs   chan *pubsub.Message

	closeOnce sync.Once
	closed    chan struct{} // closed by Close
	broken    chan struct{} // closed when every streaming pull has returned
	err       error         // the first one's error; read after broken
	cancel    context.CancelFunc
}

// run runs one streaming pull per subscriber; when one returns, the others
// are stopped too and the subscription is broken (the portable bus
// subscribes again).
func (s *subscription) run(ctx context.Context, subs []*pubsub.Subscriber) {
	defer close(s.broken)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var once sync.Once
	var wg sync.WaitGroup
	for _, sub := range subs {
		wg.Go(func() {
			err := sub.Receive(ctx, func(_ context.Context, pm *pubsub.Message) {
				select {
				case s.msgs <- pm:
				case <-s.closed:
					pm.Nack()
				}
			})
			if err == nil {
				err = fmt.Errorf("streaming pull on %s returned", sub.ID())
			}
			once.Do(func() { s.err = err })
			stop()
		})
	}
	wg.Wait()
}

// Receive returns what is waiting (at least one message, at most max).
func (s *subscription) Receive(ctx context.Context, max int) ([]*driver.Message, error) {
	ms, err := driver.Take(ctx, s.msgs, s.broken, max, s.fromPubSub)
	if errors.Is(err, driver.ErrEnded) {
		return nil, fmt.Errorf("gcppubsub: receive %s: %w", s.subID, s.err)
	}
	return ms, err
}

// Close stops the streaming pull and releases what was received but not
// taken; it waits until the streaming pull has returned.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.cancel()
		s.b.mu.Lock()
		for _, name := range s.active {
			if s.b.activeDeliverySubscription[name]--; s.b.activeDeliverySubscription[name] <= 0 {
				delete(s.b.activeDeliverySubscription, name)
			}
		}
		s.b.mu.Unlock()
	})
	// The streaming pull returns once every message it handed over is
	// settled: release those still queued while waiting for it.
	for {
		select {
		case pm := <-s.msgs:
			pm.Nack()
		case <-s.broken:
			for {
				select {
				case pm := <-s.msgs:
					pm.Nack()
				default:
					return nil
				}
			}
		}
	}
}

// fromPubSub converts a received message; the id attribute becomes the id.
func (s *subscription) fromPubSub(pm *pubsub.Message) *driver.Message {
	m := &driver.Message{ID: pm.Attributes[AttrMessageID], Data: pm.Data, OrderingKey: pm.OrderingKey, DeliveryAttempt: 1, Acker: acker{pm}}
	if m.ID == "" {
		m.ID = pm.ID
	}
	if len(pm.Attributes) > 1 || (len(pm.Attributes) == 1 && pm.Attributes[AttrMessageID] == "") {
		m.Attributes = make(map[string]string, len(pm.Attributes))
		for k, v := range pm.Attributes {
			if k != AttrMessageID {
				m.Attributes[k] = v
			}
		}
	}
	if pm.DeliveryAttempt != nil && *pm.DeliveryAttempt > 0 {
		m.DeliveryAttempt = *pm.DeliveryAttempt
	}
	if s.queue == driver.QueueDelivery {
		m.Instance = m.Attributes[attrInstance]
	}
	return m
}

// acker settles a Pub/Sub message. Nack's delay is the retry policy's.
type acker struct{ pm *pubsub.Message }

func (a acker) Ack() error               { a.pm.Ack(); return nil }
func (a acker) Nack(time.Duration) error { a.pm.Nack(); return nil }

// Extend does nothing: the client library extends the leases of the
// messages it holds by itself (Capabilities.Extend is false).
func (a acker) Extend() error { return nil }

// DeadLetter publishes a copy of m (with the attributes given, which carry
// the reason) to queue's dead-letter topic, keeping its ordering key.
func (b *Driver) DeadLetter(ctx context.Context, queue string, m *driver.Message) error {
	p := b.ingressDead
	if queue == driver.QueueDelivery {
		p = b.deliveryDead
	}
	if err := errors.Join(b.publishAll(ctx, ctx, p, []*pubsub.Message{toPubSub(m)})...); err != nil {
		return fmt.Errorf("gcppubsub: publish to %s dead-letter topic: %w", queue, err)
	}
	return nil
}
