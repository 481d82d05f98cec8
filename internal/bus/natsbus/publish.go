package natsbus

import (
	"context"
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

// Publish publishes ms and returns once the stream stored each (or found it
// a duplicate of one stored within the duplicate window). One message is
// published synchronously; several go out in order on the connection
// without waiting for each acknowledgement, then all are awaited.
func (d *Driver) Publish(ctx context.Context, queue string, ms []*driver.Message) error {
	if d.closed.Load() {
		return driver.ErrClosed
	}
	if len(ms) == 1 {
		subj, err := d.subject(queue, ms[0])
		if err != nil {
			return fmt.Errorf("natsbus: publish %s: %w", ms[0].ID, err)
		}
		if _, err := d.js.PublishMsg(ctx, natsMsg(subj, ms[0])); err != nil {
			return fmt.Errorf("natsbus: publish %s: %w", ms[0].ID, err)
		}
		return nil
	}
	// When too many publishes are in flight, wait (up to the context's
	// deadline) rather than fail.
	stall := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		stall = max(time.Until(dl), time.Millisecond)
	}
	futures := make([]jetstream.PubAckFuture, 0, len(ms))
	for _, m := range ms {
		subj, err := d.subject(queue, m)
		if err != nil {
			return fmt.Errorf("natsbus: publish %s: %w", m.ID, err)
		}
		f, err := d.js.PublishMsgAsync(natsMsg(subj, m), jetstream.WithStallWait(stall))
		if err != nil {
			return fmt.Errorf("natsbus: publish %s: %w", m.ID, err)
		}
		futures = append(futures, f)
	}
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("natsbus: publish %s: %w", ms[i].ID, err)
		case <-ctx.Done():
			return fmt.Errorf("natsbus: publish %d messages: %w", len(ms), ctx.Err())
		}
	}
	return nil
}
