package natsbus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Header names the driver uses beside the attributes (which the portable
// bus keeps clear of the Nats- and Routing- prefixes).
const (
	// hdrID carries Message.ID when Nats-Msg-Id does not (a replay, or a
	// dead-letter copy whose Nats-Msg-Id deduplicates something else).
	hdrID = "Routing-Id"
	// hdrSubject is the original subject of a dead-lettered message.
	hdrSubject = "Routing-Subject"
	// hdrOrderingKey carries Message.OrderingKey.
	hdrOrderingKey = "Routing-Ordering-Key"
)

// natsMsg builds the JetStream message for m on subject.
func natsMsg(subject string, m *driver.Message) *nats.Msg {
	h := make(nats.Header, len(m.Attributes)+2)
	for k, v := range m.Attributes {
		h[k] = []string{v}
	}
	if m.DedupID != "" {
		h[jetstream.MsgIDHeader] = []string{m.DedupID}
	}
	if m.DedupID != m.ID {
		h[hdrID] = []string{m.ID}
	}
	if m.OrderingKey != "" {
		h[hdrOrderingKey] = []string{m.OrderingKey}
	}
	return &nats.Msg{Subject: subject, Header: h, Data: m.Data}
}

// messageID is the id a message was published with.
func messageID(h nats.Header) string {
	if id := h.Get(hdrID); id != "" {
		return id
	}
	return h.Get(jetstream.MsgIDHeader)
}

func (d *Driver) subject(queue string, m *driver.Message) (string, error) {
	switch queue {
	case driver.QueueIngress:
		return d.ingressSubject, nil
	case driver.QueueDelivery:
		if err := checkInstance(m.Instance); err != nil {
			return "", err
		}
		return d.deliverySubject(m.Instance), nil
	}
	return "", fmt.Errorf("unknown queue %q", queue)
}

// ErrAckTimeout is the error of a publish the stream did not acknowledge
// within Config.PublishAckTimeout.
var ErrAckTimeout = errors.New("no publish acknowledgement in time")

// Publish publishes ms and returns once the stream stored each (or found it
// a duplicate of one stored within the duplicate window). Every message
// goes out in order on the connection without waiting for the previous
// one's acknowledgement; then all are awaited together, for at most
// Config.PublishAckTimeout (or the caller's context, if it ends first): a
// stream leader that dies holding a publish fails it after that long,
// wrapping ErrAckTimeout, and the caller publishes again (the message id
// keeps a repeat within the duplicate window stored once).
func (d *Driver) Publish(ctx context.Context, queue string, ms []*driver.Message) error {
	if d.closed.Load() {
		return driver.ErrClosed
	}
	if err := d.notReady(); err != nil {
		return err
	}
	wait := d.cfg.PublishAckTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, max(time.Until(dl), time.Millisecond))
	}
	// When too many publishes are in flight, wait (up to the same bound)
	// rather than fail.
	futures := make([]jetstream.PubAckFuture, 0, len(ms))
	for _, m := range ms {
		subj, err := d.subject(queue, m)
		if err != nil {
			return fmt.Errorf("natsbus: publish %s: %w", m.ID, err)
		}
		f, err := d.js.PublishMsgAsync(natsMsg(subj, m), jetstream.WithStallWait(wait))
		if err != nil {
			return fmt.Errorf("natsbus: publish %s: %w", m.ID, err)
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("natsbus: publish %s: %w", ms[i].ID, err)
		case <-timeout.C:
			return fmt.Errorf("natsbus: publish %s (%d of %d acknowledged): %w after %v (the stream's leader may have died or moved)",
				ms[i].ID, i, len(ms), ErrAckTimeout, wait)
		case <-ctx.Done():
			return fmt.Errorf("natsbus: publish %d messages: %w", len(ms), ctx.Err())
		}
	}
	return nil
}
