package natsbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// hdrEngineAttempts carries the delivery count of a message the server
// stopped redelivering (copied by the max-deliveries advisory).
const hdrEngineAttempts = "Routing-Engine-Attempts"

func (d *Driver) queue(name string) (*queue, error) {
	if d.closed.Load() {
		return nil, driver.ErrClosed
	}
	switch name {
	case driver.QueueIngress:
		return &d.ingress, nil
	case driver.QueueDelivery:
		return &d.delivery, nil
	}
	return nil, fmt.Errorf("natsbus: unknown queue %q (want %s or %s)", name, driver.QueueIngress, driver.QueueDelivery)
}

// DeadLetter copies a received message into its queue's dead-letter stream,
// with its id, attributes, ordering key and original subject. The copy's
// Nats-Msg-Id is derived from the original's stream sequence, so that the
// portable bus and the max-deliveries advisory store one copy between them.
func (d *Driver) DeadLetter(ctx context.Context, queueName string, m *driver.Message) error {
	q, err := d.queue(queueName)
	if err != nil {
		return err
	}
	ak, member := m.Acker, ""
	if m.Pack != nil { // an event of a pack: the pack's stream message, and its place in it
		ak, member = m.Pack, "."+strconv.Itoa(m.PackIndex)
	}
	a, ok := ak.(*acker)
	if !ok {
		return fmt.Errorf("natsbus: dead-letter %s: not a message this driver received", m.ID)
	}
	cp := *m
	cp.DedupID = ""
	if a.streamSeq != 0 {
		cp.DedupID = q.stream + ":" + strconv.FormatUint(a.streamSeq, 10) + member
	}
	msg := natsMsg(q.dlqSub, &cp)
	msg.Header.Set(hdrID, m.ID)
	msg.Header.Set(hdrSubject, a.jm.Subject())
	if _, err := d.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("natsbus: publish to dead-letter stream %s: %w", q.dlqStream, err)
	}
	return nil
}

// OnEngineDeadLetter registers fn, called for each message the
// max-deliveries advisory moves to a dead-letter stream.
func (d *Driver) OnEngineDeadLetter(fn func(queue string)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.onEngineDead = fn
}

// maxDeliveriesAdvisory is the part of JetStream's
// io.nats.jetstream.advisory.v1.max_deliver event the driver reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries int    `json:"deliveries"`
}

// subscribeAdvisories listens, in a queue group shared by every instance,
// for the advisories JetStream sends when a message has used all its
// deliveries without being settled (its ack deadline expired each time),
// and copies such messages into the dead-letter stream.
func (d *Driver) subscribeAdvisories() error {
	group := d.cfg.SubjectPrefix + "-dead-letter"
	subjects := []string{
		"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + d.ingress.stream + "." + d.ingressConsumer,
		"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + d.delivery.stream + ".*",
	}
	var subs []*nats.Subscription
	for _, subj := range subjects {
		s, err := d.nc.QueueSubscribe(subj, group, d.onMaxDeliveries)
		if err != nil {
			for _, prev := range subs {
				_ = prev.Unsubscribe()
			}
			return fmt.Errorf("natsbus: subscribe %s: %w", subj, err)
		}
		subs = append(subs, s)
	}
	// Make sure the server has the subscriptions before New returns.
	if err := d.nc.Flush(); err != nil {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		return fmt.Errorf("natsbus: flush advisory subscriptions: %w", err)
	}
	d.mu.Lock()
	d.advisory = subs
	d.mu.Unlock()
	return nil
}

func (d *Driver) onMaxDeliveries(msg *nats.Msg) {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(msg.Data, &adv); err != nil {
		d.log.Warn("undecodable max-deliveries advisory", "subject", msg.Subject, "err", err)
		return
	}
	var q *queue
	switch adv.Stream {
	case d.ingress.stream:
		q = &d.ingress
	case d.delivery.stream:
		q = &d.delivery
	default:
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	moved, err := d.deadLetterBySeq(ctx, q, adv.StreamSeq, adv.Deliveries)
	if err != nil {
		d.log.Error("dead-lettering an expired message failed", "queue", q.name, "stream_seq", adv.StreamSeq, "err", err)
		return
	}
	if !moved {
		return
	}
	d.log.Warn("message dead-lettered: its deliveries ran out unsettled", "queue", q.name, "stream_seq", adv.StreamSeq, "attempts", adv.Deliveries)
	d.mu.Lock()
	fn := d.onEngineDead
	d.mu.Unlock()
	if fn != nil {
		fn(q.name)
	}
}

// deadLetterBySeq copies the message at seq of q's stream into the
// dead-letter stream and deletes it from q's stream. It reports false when
// the message was settled meanwhile.
func (d *Driver) deadLetterBySeq(ctx context.Context, q *queue, seq uint64, attempts int) (bool, error) {
	s, err := d.js.Stream(ctx, q.stream)
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", q.stream, err)
	}
	rm, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get message %d: %w", seq, err)
	}
	h := make(nats.Header, len(rm.Header)+4)
	for k, v := range rm.Header {
		if !reservedHeader(k) {
			h[k] = v
		}
	}
	h.Set(hdrID, messageID(rm.Header))
	if key := rm.Header.Get(hdrOrderingKey); key != "" {
		h.Set(hdrOrderingKey, key)
	}
	h.Set(hdrSubject, rm.Subject)
	h.Set(hdrEngineAttempts, strconv.Itoa(attempts))
	h.Set(jetstream.MsgIDHeader, q.stream+":"+strconv.FormatUint(seq, 10))
	if _, err := d.js.PublishMsg(ctx, &nats.Msg{Subject: q.dlqSub, Header: h, Data: rm.Data}); err != nil {
		return false, fmt.Errorf("publish to dead-letter stream %s: %w", q.dlqStream, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, fmt.Errorf("delete message %d: %w", seq, err)
	}
	return true, nil
}

// toDead turns a message of a dead-letter stream into a driver.DeadMessage.
// A dead message's ID is its sequence in the dead-letter stream.
func (d *Driver) toDead(q *queue, rm *jetstream.RawStreamMsg) driver.DeadMessage {
	attempts, _ := strconv.Atoi(rm.Header.Get(hdrEngineAttempts))
	m := driver.Message{
		ID:          messageID(rm.Header),
		Data:        rm.Data,
		Attributes:  attributes(rm.Header),
		OrderingKey: rm.Header.Get(hdrOrderingKey),
	}
	if q.name == driver.QueueDelivery {
		m.Instance = m.Attributes[driver.AttrInstance]
	}
	return driver.DeadMessage{ID: strconv.FormatUint(rm.Sequence, 10), Message: m, Attempts: attempts, DeadAt: rm.Time}
}

// ListDead returns up to limit (all when limit <= 0) dead messages of
// queue, oldest first.
func (d *Driver) ListDead(ctx context.Context, queueName string, limit int) ([]driver.DeadMessage, error) {
	q, err := d.queue(queueName)
	if err != nil {
		return nil, err
	}
	var out []driver.DeadMessage
	err = d.eachDead(ctx, q, func(rm *jetstream.RawStreamMsg) bool {
		out = append(out, d.toDead(q, rm))
		return limit <= 0 || len(out) < limit
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: list dead %s: %w", queueName, err)
	}
	return out, nil
}

// GetDead returns the dead message of queue with this id, or an error
// wrapping driver.ErrNotFound.
func (d *Driver) GetDead(ctx context.Context, queueName, id string) (driver.DeadMessage, error) {
	q, err := d.queue(queueName)
	if err != nil {
		return driver.DeadMessage{}, err
	}
	rm, err := d.getDead(ctx, q, id)
	if err != nil {
		return driver.DeadMessage{}, fmt.Errorf("natsbus: get dead %s %s: %w", queueName, id, err)
	}
	return d.toDead(q, rm), nil
}

// DeleteDead deletes the dead messages with these ids (all when ids is
// nil) and returns how many it deleted.
func (d *Driver) DeleteDead(ctx context.Context, queueName string, ids []string) (int, error) {
	q, err := d.queue(queueName)
	if err != nil {
		return 0, err
	}
	if ids == nil {
		n, err := d.purgeAll(ctx, q)
		if err != nil {
			return 0, fmt.Errorf("natsbus: delete dead %s: %w", queueName, err)
		}
		return n, nil
	}
	s, err := d.js.Stream(ctx, q.dlqStream)
	if err != nil {
		return 0, fmt.Errorf("natsbus: delete dead %s: stream %s: %w", queueName, q.dlqStream, err)
	}
	n := 0
	for _, id := range ids {
		if _, err := d.getDead(ctx, q, id); errors.Is(err, driver.ErrNotFound) {
			continue
		} else if err != nil {
			return n, fmt.Errorf("natsbus: delete dead %s %s: %w", queueName, id, err)
		}
		seq, _ := strconv.ParseUint(id, 10, 64)
		err := s.DeleteMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("natsbus: delete dead %s %s: %w", queueName, id, err)
		}
		n++
	}
	return n, nil
}

// eachDead calls fn on the messages of q's dead-letter stream in order
// until fn returns false.
func (d *Driver) eachDead(ctx context.Context, q *queue, fn func(*jetstream.RawStreamMsg) bool) error {
	s, err := d.js.Stream(ctx, q.dlqStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", q.dlqStream, err)
	}
	for seq := uint64(1); ; {
		rm, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(q.dlqSub))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get message after %d: %w", seq, err)
		}
		if !fn(rm) {
			return nil
		}
		seq = rm.Sequence + 1
	}
}

func (d *Driver) getDead(ctx context.Context, q *queue, id string) (*jetstream.RawStreamMsg, error) {
	seq, err := strconv.ParseUint(id, 10, 64)
	if err != nil || seq == 0 {
		return nil, driver.ErrNotFound
	}
	s, err := d.js.Stream(ctx, q.dlqStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", q.dlqStream, err)
	}
	rm, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, driver.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if rm.Subject != q.dlqSub {
		return nil, driver.ErrNotFound
	}
	return rm, nil
}

// purgeAll purges the dead-letter stream and returns how many messages the
// server removed.
func (d *Driver) purgeAll(ctx context.Context, q *queue) (int, error) {
	req, err := json.Marshal(struct {
		Subject string `json:"filter,omitempty"`
	}{q.dlqSub})
	if err != nil {
		return 0, err
	}
	resp, err := d.nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+q.dlqStream, req)
	if err != nil {
		return 0, fmt.Errorf("purge %s: %w", q.dlqStream, err)
	}
	var r struct {
		Success bool   `json:"success"`
		Purged  uint64 `json:"purged"`
		Error   *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return 0, fmt.Errorf("purge %s: decode response: %w", q.dlqStream, err)
	}
	if r.Error != nil {
		return 0, fmt.Errorf("purge %s: %s (%d)", q.dlqStream, r.Error.Description, r.Error.Code)
	}
	return int(r.Purged), nil
}
