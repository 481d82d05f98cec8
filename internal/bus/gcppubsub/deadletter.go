package gcppubsub

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Dead-letter queues on Pub/Sub.
//
// Each dead-letter topic has a hold subscription that keeps its messages
// (for up to 7 days, Pub/Sub's retention limit). Every operation reads the
// queue the same way: it pulls the hold subscription until a pull brings
// nothing new (or DeadLetterScanLimit messages), which leases the messages
// so that each is seen once; it then acknowledges the ones it removes
// (replayed or purged) and releases the others at once with a zero ack
// deadline, so that they stay in the queue. A lease that is never released
// (a process killed mid-operation) ends after the hold subscription's ack
// deadline (60s). Operations of one Bus are serialised; two processes
// operating on the same queue at the same time each see only the messages
// the other has not leased.
//
// A dead message is identified by its Message.ID. Copies with the same ID
// are one dead message (a message dead-lettered twice, or re-forwarded by
// the emulator); removing it acknowledges every copy seen.

// deadSettleTimeout bounds acknowledging and releasing dead messages, which
// runs even when the caller's context has ended so that leases are not left
// to expire.
const deadSettleTimeout = 30 * time.Second

// ackBatch is how many ack ids go in one acknowledge or modify request.
const ackBatch = 500

// Attributes set by Pub/Sub on messages it dead-letters itself.
const (
	attrPubSubDeadPrefix        = "CloudPubSubDeadLetter"
	attrPubSubDeadDeliveryCount = "CloudPubSubDeadLetterSourceDeliveryCount"
)

// heldDead is one dead message read from a hold subscription, with the ack
// ids of every copy read.
type heldDead struct {
	dm     driver.DeadMessage
	ackIDs []string
}

// ListDead returns up to limit dead messages of queue (all that one scan
// reads when limit <= 0), oldest first by the time they were dead-lettered.
// It leaves them in the queue.
func (b *Driver) ListDead(ctx context.Context, queue string, limit int) ([]driver.DeadMessage, error) {
	var out []driver.DeadMessage
	err := b.withDead(ctx, queue, func(held []*heldDead) ([]*heldDead, error) {
		for _, h := range held {
			if limit > 0 && len(out) == limit {
				break
			}
			out = append(out, h.dm)
		}
		return nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("gcppubsub: list dead %s: %w", queue, err)
	}
	return out, nil
}

// GetDead returns the dead message of queue whose ID is id, or an error
// wrapping driver.ErrNotFound. It leaves it in the queue.
func (b *Driver) GetDead(ctx context.Context, queue, id string) (driver.DeadMessage, error) {
	var found *driver.DeadMessage
	err := b.withDead(ctx, queue, func(held []*heldDead) ([]*heldDead, error) {
		for _, h := range held {
			if h.dm.ID == id {
				found = &h.dm
				break
			}
		}
		return nil, nil
	})
	if err != nil {
		return driver.DeadMessage{}, fmt.Errorf("gcppubsub: get dead %s %s: %w", queue, id, err)
	}
	if found == nil {
		return driver.DeadMessage{}, fmt.Errorf("gcppubsub: get dead %s %s: %w", queue, id, driver.ErrNotFound)
	}
	return *found, nil
}

// DeleteDead deletes the dead messages of queue with these ids (all when
// ids is nil) and returns how many it deleted. Ids not in the queue are
// ignored.
func (b *Driver) DeleteDead(ctx context.Context, queue string, ids []string) (int, error) {
	deleted := 0
	err := b.withDead(ctx, queue, func(held []*heldDead) ([]*heldDead, error) {
		chosen := selectDead(held, ids)
		deleted = len(chosen)
		return chosen, nil
	})
	if err != nil {
		return 0, fmt.Errorf("gcppubsub: delete dead %s: %w", queue, err)
	}
	return deleted, nil
}

func selectDead(held []*heldDead, ids []string) []*heldDead {
	if ids == nil {
		return held
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	var chosen []*heldDead
	for _, h := range held {
		if want[h.dm.ID] {
			chosen = append(chosen, h)
		}
	}
	return chosen
}

// withDead reads queue's dead messages, oldest first, hands them to f, then
// acknowledges those f returns and releases the rest, whatever f's error.
func (b *Driver) withDead(ctx context.Context, queue string, f func([]*heldDead) ([]*heldDead, error)) error {
	var topic string
	switch queue {
	case driver.QueueIngress:
		topic = b.cfg.IngressDeadLetterTopic
	case driver.QueueDelivery:
		topic = b.cfg.DeliveryDeadLetterTopic
	default:
		return fmt.Errorf("unknown queue %q (want %q or %q)", queue, driver.QueueIngress, driver.QueueDelivery)
	}
	if b.isClosed() {
		return driver.ErrClosed
	}
	b.deadOps.Lock()
	defer b.deadOps.Unlock()

	sub := b.subscriptionName(holdSubscriptionID(topic))
	held, scanErr := b.scanDead(ctx, sub, queue)
	var remove []*heldDead
	var ferr error
	if scanErr == nil {
		remove, ferr = f(held)
	}
	settleErr := b.settleDead(ctx, sub, held, remove)
	return errors.Join(scanErr, ferr, settleErr)
}

// scanDead pulls the hold subscription until a pull brings nothing new or
// the scan limit is reached, and returns the dead messages oldest first.
// On error it still returns what it leased, for release.
func (b *Driver) scanDead(ctx context.Context, sub, queue string) ([]*heldDead, error) {
	byID := map[string]*heldDead{}
	var held []*heldDead
	for len(held) < b.cfg.DeadLetterScanLimit {
		pctx, cancel := context.WithTimeout(ctx, b.cfg.DeadLetterPullWait)
		resp, err := b.client.SubscriptionAdminClient.Pull(pctx, &pubsubpb.PullRequest{
			Subscription: sub,
			MaxMessages:  int32(min(1000, b.cfg.DeadLetterScanLimit-len(held))),
		})
		cancel()
		if err != nil {
			if ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded) {
				break // nothing arrived within the wait: the queue is read
			}
			return held, fmt.Errorf("pull %s: %w", sub, err)
		}
		fresh := 0
		for _, rm := range resp.GetReceivedMessages() {
			dm := toDead(queue, rm)
			if h := byID[dm.ID]; h != nil {
				h.ackIDs = append(h.ackIDs, rm.GetAckId())
				continue
			}
			h := &heldDead{dm: dm, ackIDs: []string{rm.GetAckId()}}
			byID[dm.ID] = h
			held = append(held, h)
			fresh++
		}
		if fresh == 0 {
			break
		}
	}
	slices.SortStableFunc(held, func(x, y *heldDead) int {
		return cmp.Or(x.dm.DeadAt.Compare(y.dm.DeadAt), strings.Compare(x.dm.ID, y.dm.ID))
	})
	return held, nil
}

// settleDead acknowledges remove and releases the rest of held.
func (b *Driver) settleDead(ctx context.Context, sub string, held, remove []*heldDead) error {
	removing := make(map[*heldDead]bool, len(remove))
	var ack, release []string
	for _, h := range remove {
		removing[h] = true
		ack = append(ack, h.ackIDs...)
	}
	for _, h := range held {
		if !removing[h] {
			release = append(release, h.ackIDs...)
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deadSettleTimeout)
	defer cancel()
	sac := b.client.SubscriptionAdminClient
	var errs []error
	for chunk := range slices.Chunk(ack, ackBatch) {
		if err := sac.Acknowledge(sctx, &pubsubpb.AcknowledgeRequest{Subscription: sub, AckIds: chunk}); err != nil {
			errs = append(errs, fmt.Errorf("acknowledge %d dead messages on %s: %w", len(chunk), sub, err))
		}
	}
	for chunk := range slices.Chunk(release, ackBatch) {
		err := sac.ModifyAckDeadline(sctx, &pubsubpb.ModifyAckDeadlineRequest{Subscription: sub, AckIds: chunk, AckDeadlineSeconds: 0})
		if err != nil {
			errs = append(errs, fmt.Errorf("release %d dead messages on %s: %w", len(chunk), sub, err))
		}
	}
	return errors.Join(errs...)
}

// toDead converts a message read from a hold subscription. Copies made by
// Pub/Sub's own dead-letter policy carry its delivery count, or nothing on
// the emulator.
func toDead(queue string, rm *pubsubpb.ReceivedMessage) driver.DeadMessage {
	pm := rm.GetMessage()
	src := pm.GetAttributes()
	id := src[AttrMessageID]
	if id == "" {
		id = pm.GetMessageId()
	}
	attempts, _ := strconv.Atoi(src[attrPubSubDeadDeliveryCount])
	var attrs map[string]string
	for k, v := range src {
		if k == AttrMessageID || strings.HasPrefix(k, attrPubSubDeadPrefix) {
			continue
		}
		if attrs == nil {
			attrs = make(map[string]string, len(src))
		}
		attrs[k] = v
	}
	var deadAt time.Time
	if pm.GetPublishTime() != nil {
		deadAt = pm.GetPublishTime().AsTime()
	}
	m := driver.Message{ID: id, Data: pm.GetData(), Attributes: attrs, OrderingKey: pm.GetOrderingKey()}
	if queue == driver.QueueDelivery {
		m.Instance = attrs[attrInstance]
	}
	return driver.DeadMessage{ID: id, Message: m, Attempts: attempts, DeadAt: deadAt}
}
