package natsbus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/batch"
	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// pullExpiry is how long one pull request waits on the server; the next
// one is already open before it ends. It is short so that a consumer
// whose leader moved to another server (a failover) is asked again within
// seconds: the pull request the old leader held is gone with it.
// pullHeartbeat is the server's idle heartbeat within a pull: one missed
// twice over makes the iterator pull again.
const (
	pullExpiry    = 3 * time.Second
	pullHeartbeat = time.Second
)

// Subscribe opens a subscription on the ingress consumer, or on instance's
// delivery consumer (created or updated here). Pull requests stay open back
// to back (JetStream's Messages iterator), up to Config.Prefetch messages
// ahead of the receiver; a receiver that stops taking messages stops the
// pulls.
func (d *Driver) Subscribe(ctx context.Context, queue, instance string) (driver.Subscription, error) {
	if d.closed.Load() {
		return nil, driver.ErrClosed
	}
	if err := d.setup(ctx); err != nil {
		return nil, d.notReady()
	}
	var (
		c   jetstream.Consumer
		err error
	)
	switch queue {
	case driver.QueueIngress:
		c, err = d.ingressCons(ctx)
	case driver.QueueDelivery:
		if err := checkInstance(instance); err != nil {
			return nil, fmt.Errorf("natsbus: subscribe: %w", err)
		}
		c, err = d.deliveryCons(ctx, instance)
	default:
		return nil, fmt.Errorf("natsbus: subscribe: unknown queue %q", queue)
	}
	if err != nil {
		return nil, err
	}
	// A missed heartbeat (a busy machine, a reconnect) makes the iterator
	// pull again rather than end the subscription.
	it, err := c.Messages(jetstream.PullMaxMessages(d.cfg.Prefetch), jetstream.PullExpiry(pullExpiry),
		jetstream.PullHeartbeat(pullHeartbeat), jetstream.WithMessagesErrOnMissingHeartbeat(false))
	if err != nil {
		return nil, fmt.Errorf("natsbus: subscribe %s: %w", queue, err)
	}
	s := &subscription{
		d:      d,
		q:      d.queueOf(queue),
		it:     it,
		msgs:   make(chan jetstream.Msg, d.cfg.Prefetch),
		closed: make(chan struct{}),
		broken: make(chan struct{}),
	}
	d.subscriptions.Add(1)
	go s.pump()
	return s, nil
}

func (d *Driver) queueOf(name string) *queue {
	if name == driver.QueueDelivery {
		return &d.delivery
	}
	return &d.ingress
}

// subscription moves messages from the iterator to Receive through a
// channel, so that Receive can take what is waiting without blocking.
type subscription struct {
	d    *Driver
	q    *queue
	it   jetstream.MessagesContext
	msgs chan jetstream.Msg

	closeOnce sync.Once
	closed    chan struct{} // closed by Close
	broken    chan struct{} // closed by the pump when the iterator ends
	err       error         // why the iterator ended; read after broken
}

// pump feeds msgs until the iterator ends. Once the subscription is
// closing, what the iterator still hands over is released at once.
func (s *subscription) pump() {
	defer s.d.subscriptions.Done()
	defer close(s.broken)
	for {
		jm, err := s.it.Next()
		if err != nil {
			s.err = err
			return
		}
		select {
		case s.msgs <- jm:
		case <-s.closed:
			_ = jm.Nak()
		}
	}
}

// Receive returns what is waiting (at least one message, at most max).
func (s *subscription) Receive(ctx context.Context, max int) ([]*driver.Message, error) {
	ms, err := driver.Take(ctx, s.msgs, s.broken, max, s.decode)
	if errors.Is(err, driver.ErrEnded) {
		return nil, fmt.Errorf("natsbus: subscription on %s ended: %w", s.q.stream, s.err)
	}
	return ms, err
}

// Close stops the pulls and releases what was received but not taken.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.it.Drain()
	})
	<-s.broken
	batch.Drain(s.msgs, func(jm jetstream.Msg) bool {
		_ = jm.Nak()
		return true
	})
	if errors.Is(s.err, jetstream.ErrMsgIteratorClosed) || errors.Is(s.err, nats.ErrConnectionClosed) {
		return nil
	}
	return s.err
}

// decode turns a received JetStream message into a driver message.
func (s *subscription) decode(jm jetstream.Msg) *driver.Message {
	h := jm.Headers()
	m := &driver.Message{
		ID:              messageID(h),
		Data:            jm.Data(),
		OrderingKey:     h.Get(hdrOrderingKey),
		Attributes:      attributes(h),
		DeliveryAttempt: 1,
	}
	a := &acker{jm: jm}
	if md, err := jm.Metadata(); err == nil {
		m.DeliveryAttempt = int(md.NumDelivered)
		a.streamSeq = md.Sequence.Stream
	}
	if s.q.name == driver.QueueDelivery {
		m.Instance, _ = strings.CutPrefix(jm.Subject(), s.d.cfg.SubjectPrefix+".delivery.")
	}
	m.Acker = a
	return m
}

// acker settles one JetStream message; the dead-letter copy needs its
// stream sequence.
type acker struct {
	jm        jetstream.Msg
	streamSeq uint64
}

func (a *acker) Ack() error { return a.jm.Ack() }

// Extend tells the server the message is still being worked on.
func (a *acker) Extend() error { return a.jm.InProgress() }

func (a *acker) Nack(delay time.Duration) error {
	if delay <= 0 {
		return a.jm.Nak()
	}
	return a.jm.NakWithDelay(delay)
}

// reservedHeader reports whether k is one of the driver's or JetStream's
// own headers rather than an attribute.
func reservedHeader(k string) bool {
	return len(k) >= 5 && strings.EqualFold(k[:5], "Nats-") || len(k) >= 8 && strings.EqualFold(k[:8], "Routing-")
}

// attributes returns the attribute headers of h, or nil when there are none.
func attributes(h nats.Header) map[string]string {
	var attrs map[string]string
	for k, v := range h {
		if reservedHeader(k) || len(v) == 0 {
			continue
		}
		if attrs == nil {
			attrs = make(map[string]string, len(h))
		}
		attrs[k] = v[0]
	}
	return attrs
}
