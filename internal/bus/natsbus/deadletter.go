package natsbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// maxReasonLen bounds the reason header of a dead-lettered message.
const maxReasonLen = 1024

// deadLetter copies a message into q's dead-letter stream with the reason
// and attempt count. The copy's Nats-Msg-Id is derived from the original's
// stream sequence, so the handler path and the advisory path store one copy.
func (b *Bus) deadLetter(ctx context.Context, q *queue, subject string, h nats.Header, data []byte, streamSeq uint64, reason string, attempts int) error {
	dh := make(nats.Header, len(h)+5)
	for k, v := range h {
		if reservedHeader(k) {
			continue
		}
		dh[k] = v
	}
	id := h.Get(hdrID)
	if id == "" {
		id = h.Get(jetstream.MsgIDHeader)
	}
	dh.Set(hdrID, id)
	dh.Set(hdrSubject, subject)
	dh.Set(bus.AttrDeadReason, sanitizeReason(reason))
	dh.Set(bus.AttrDeadAttempts, strconv.Itoa(attempts))
	if streamSeq != 0 {
		dh.Set(jetstream.MsgIDHeader, q.stream+":"+strconv.FormatUint(streamSeq, 10))
	}
	if _, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: q.dlqSub, Header: dh, Data: data}); err != nil {
		return fmt.Errorf("publish to dead-letter stream %s: %w", q.dlqStream, err)
	}
	return nil
}

func sanitizeReason(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxReasonLen {
		s = s[:maxReasonLen]
	}
	return s
}

// maxDeliveriesAdvisory is the part of JetStream's
// io.nats.jetstream.advisory.v1.max_deliver event the adapter reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries int    `json:"deliveries"`
}

// subscribeAdvisories listens, in a queue group shared by every instance,
// for the advisories JetStream sends when a message has used all its
// deliveries without a handler settling it (its ack deadline expired each
// time), and copies such messages into the dead-letter stream.
func (b *Bus) subscribeAdvisories() error {
	group := b.cfg.SubjectPrefix + "-dead-letter"
	subjects := []string{
		"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + b.cfg.IngressStream + "." + b.cfg.IngressConsumer,
		"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + b.cfg.DeliveryStream + ".*",
	}
	for _, subj := range subjects {
		s, err := b.nc.QueueSubscribe(subj, group, b.onMaxDeliveries)
		if err != nil {
			for _, prev := range b.advisory {
				_ = prev.Unsubscribe()
			}
			b.advisory = nil
			return fmt.Errorf("natsbus: subscribe %s: %w", subj, err)
		}
		b.advisory = append(b.advisory, s)
	}
	// Make sure the server has the subscriptions before New returns.
	if err := b.nc.Flush(); err != nil {
		return fmt.Errorf("natsbus: flush advisory subscriptions: %w", err)
	}
	return nil
}

func (b *Bus) onMaxDeliveries(msg *nats.Msg) {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(msg.Data, &adv); err != nil {
		b.log.Warn("undecodable max-deliveries advisory", "subject", msg.Subject, "error", err)
		return
	}
	var q *queue
	switch adv.Stream {
	case b.ingress.stream:
		q = &b.ingress
	case b.delivery.stream:
		q = &b.delivery
	default:
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if err := b.deadLetterBySeq(ctx, q, adv.StreamSeq, adv.Deliveries); err != nil {
		b.log.Error("dead-lettering an expired message failed", "queue", q.name, "stream_seq", adv.StreamSeq, "error", err)
	}
}

// deadLetterBySeq copies the message at seq of q's stream into the
// dead-letter stream and deletes it from q's stream.
func (b *Bus) deadLetterBySeq(ctx context.Context, q *queue, seq uint64, attempts int) error {
	s, err := b.js.Stream(ctx, q.stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", q.stream, err)
	}
	rm, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // settled meanwhile
	}
	if err != nil {
		return fmt.Errorf("get message %d: %w", seq, err)
	}
	reason := fmt.Sprintf("not acknowledged within the ack deadline in %d deliveries", attempts)
	if err := b.deadLetter(ctx, q, rm.Subject, rm.Header, rm.Data, seq, reason, attempts); err != nil {
		return err
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete message %d: %w", seq, err)
	}
	b.log.Warn("message dead-lettered", "queue", q.name, "id", rm.Header.Get(jetstream.MsgIDHeader), "attempts", attempts, "reason", reason)
	b.deadLettered(q, reason)
	return nil
}

// deadLettered reports one dead-lettered message to Config.OnDeadLetter.
func (b *Bus) deadLettered(q *queue, reason string) {
	if b.cfg.OnDeadLetter != nil {
		b.cfg.OnDeadLetter(q.name, reason)
	}
}

func (b *Bus) queue(name string) (*queue, error) {
	if b.isClosed.Load() {
		return nil, bus.ErrClosed
	}
	switch name {
	case bus.QueueIngress:
		return &b.ingress, nil
	case bus.QueueDelivery:
		return &b.delivery, nil
	}
	return nil, fmt.Errorf("natsbus: unknown queue %q (want %s or %s)", name, bus.QueueIngress, bus.QueueDelivery)
}

// toDead turns a message of a dead-letter stream into a bus.DeadMessage.
func toDead(q *queue, rm *jetstream.RawStreamMsg) bus.DeadMessage {
	attempts, _ := strconv.Atoi(rm.Header.Get(bus.AttrDeadAttempts))
	attrs := attributes(rm.Header)
	delete(attrs, bus.AttrDeadReason)
	delete(attrs, bus.AttrDeadAttempts)
	if len(attrs) == 0 {
		attrs = nil
	}
	return bus.DeadMessage{
		ID:    strconv.FormatUint(rm.Sequence, 10),
		Queue: q.name,
		Message: bus.Message{
			ID:         rm.Header.Get(hdrID),
			Data:       rm.Data,
			Attributes: attrs,
		},
		Reason:   rm.Header.Get(bus.AttrDeadReason),
		Attempts: attempts,
		DeadAt:   rm.Time,
	}
}

// ListDead returns up to limit (default 100) dead messages of queue, oldest
// first. A dead message's ID is its sequence in the dead-letter stream.
func (b *Bus) ListDead(ctx context.Context, queue string, limit int) ([]bus.DeadMessage, error) {
	q, err := b.queue(queue)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	var out []bus.DeadMessage
	err = b.eachDead(ctx, q, func(rm *jetstream.RawStreamMsg) bool {
		out = append(out, toDead(q, rm))
		return len(out) < limit
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: list dead %s: %w", queue, err)
	}
	return out, nil
}

// eachDead calls fn on the messages of q's dead-letter stream in order
// until fn returns false.
func (b *Bus) eachDead(ctx context.Context, q *queue, fn func(*jetstream.RawStreamMsg) bool) error {
	s, err := b.js.Stream(ctx, q.dlqStream)
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

// GetDead returns the dead message of queue with this id, or bus.ErrNotFound.
func (b *Bus) GetDead(ctx context.Context, queue, id string) (bus.DeadMessage, error) {
	q, err := b.queue(queue)
	if err != nil {
		return bus.DeadMessage{}, err
	}
	rm, err := b.getDead(ctx, q, id)
	if err != nil {
		return bus.DeadMessage{}, fmt.Errorf("natsbus: get dead %s %s: %w", queue, id, err)
	}
	return toDead(q, rm), nil
}

func (b *Bus) getDead(ctx context.Context, q *queue, id string) (*jetstream.RawStreamMsg, error) {
	seq, err := strconv.ParseUint(id, 10, 64)
	if err != nil || seq == 0 {
		return nil, bus.ErrNotFound
	}
	s, err := b.js.Stream(ctx, q.dlqStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", q.dlqStream, err)
	}
	rm, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, bus.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if rm.Subject != q.dlqSub {
		return nil, bus.ErrNotFound
	}
	return rm, nil
}

// ReplayDead republishes the dead messages with these ids (all when ids is
// nil) on their original subject and deletes them from the dead-letter
// stream. The replay keeps the message's id and attributes; its
// Nats-Msg-Id is fresh, so the duplicate window does not drop it.
func (b *Bus) ReplayDead(ctx context.Context, queue string, ids []string) (int, error) {
	q, err := b.queue(queue)
	if err != nil {
		return 0, err
	}
	msgs, err := b.selectDead(ctx, q, ids)
	if err != nil {
		return 0, fmt.Errorf("natsbus: replay dead %s: %w", queue, err)
	}
	s, err := b.js.Stream(ctx, q.dlqStream)
	if err != nil {
		return 0, fmt.Errorf("natsbus: replay dead %s: stream %s: %w", queue, q.dlqStream, err)
	}
	n := 0
	for _, rm := range msgs {
		subject := rm.Header.Get(hdrSubject)
		if !b.replayable(q, subject) {
			return n, fmt.Errorf("natsbus: replay dead %s %d: original subject %q is not this bus's", queue, rm.Sequence, subject)
		}
		h := make(nats.Header, len(rm.Header))
		for k, v := range rm.Header {
			if reservedHeader(k) || k == bus.AttrDeadReason || k == bus.AttrDeadAttempts {
				continue
			}
			h[k] = v
		}
		id := rm.Header.Get(hdrID)
		h.Set(hdrID, id)
		h.Set(jetstream.MsgIDHeader, "replay-"+strconv.FormatUint(rm.Sequence, 10)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36)+"-"+id)
		if _, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h, Data: rm.Data}); err != nil {
			return n, fmt.Errorf("natsbus: replay dead %s %d: %w", queue, rm.Sequence, err)
		}
		if err := s.DeleteMsg(ctx, rm.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return n, fmt.Errorf("natsbus: replay dead %s %d: delete: %w", queue, rm.Sequence, err)
		}
		n++
	}
	return n, nil
}

func (b *Bus) replayable(q *queue, subject string) bool {
	if q.name == bus.QueueIngress {
		return subject == b.ingressSubject
	}
	inst, ok := strings.CutPrefix(subject, b.cfg.SubjectPrefix+".delivery.")
	return ok && validName(inst)
}

// selectDead returns the dead messages with these ids (all when ids is
// nil); unknown ids are skipped.
func (b *Bus) selectDead(ctx context.Context, q *queue, ids []string) ([]*jetstream.RawStreamMsg, error) {
	var out []*jetstream.RawStreamMsg
	if ids == nil {
		err := b.eachDead(ctx, q, func(rm *jetstream.RawStreamMsg) bool {
			out = append(out, rm)
			return true
		})
		return out, err
	}
	for _, id := range ids {
		rm, err := b.getDead(ctx, q, id)
		if errors.Is(err, bus.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", id, err)
		}
		out = append(out, rm)
	}
	return out, nil
}

// PurgeDead deletes the dead messages with these ids (all when ids is nil)
// and returns how many it deleted.
func (b *Bus) PurgeDead(ctx context.Context, queue string, ids []string) (int, error) {
	q, err := b.queue(queue)
	if err != nil {
		return 0, err
	}
	if ids == nil {
		n, err := b.purgeAll(ctx, q)
		if err != nil {
			return 0, fmt.Errorf("natsbus: purge dead %s: %w", queue, err)
		}
		return n, nil
	}
	s, err := b.js.Stream(ctx, q.dlqStream)
	if err != nil {
		return 0, fmt.Errorf("natsbus: purge dead %s: stream %s: %w", queue, q.dlqStream, err)
	}
	n := 0
	for _, id := range ids {
		if _, err := b.getDead(ctx, q, id); errors.Is(err, bus.ErrNotFound) {
			continue
		} else if err != nil {
			return n, fmt.Errorf("natsbus: purge dead %s %s: %w", queue, id, err)
		}
		seq, _ := strconv.ParseUint(id, 10, 64)
		err := s.DeleteMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("natsbus: purge dead %s %s: %w", queue, id, err)
		}
		n++
	}
	return n, nil
}

// purgeAll purges the dead-letter stream and returns how many messages the
// server removed.
func (b *Bus) purgeAll(ctx context.Context, q *queue) (int, error) {
	req, err := json.Marshal(struct {
		Subject string `json:"filter,omitempty"`
	}{q.dlqSub})
	if err != nil {
		return 0, err
	}
	resp, err := b.nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+q.dlqStream, req)
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
