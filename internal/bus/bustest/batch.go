package bustest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// RunBatchTests checks batch receiving and publishing: every
// message arrives, batches respect their bound, each ordering key's messages
// arrive in publish order, and each message is settled by its own result (a
// failed one is redelivered, its neighbours in the batch are not).
func RunBatchTests(t *testing.T, h Harness) {
	t.Helper()
	t.Run("PublishDeliveriesInOrder", func(t *testing.T) {
		t.Parallel()
		testPublishDeliveries(t, h)
	})
	t.Run("BatchesKeepOrderAndSettleEachMessage", func(t *testing.T) {
		t.Parallel()
		b := makeBus(t, h, fastRetry)
		br := b
		const keys, perKey, maxBatch = 4, 100, 16
		// An engine may hand out one message per key at a time until it is
		// acked (the Pub/Sub fake does: about 10 a second per key), so this
		// wait is longer than the suite's.
		ctx, cancel := context.WithTimeout(context.Background(), 4*waitTimeout)
		defer cancel()
		for i := 0; i < perKey; i++ {
			for k := 0; k < keys; k++ {
				m := &bus.Message{ID: fmt.Sprintf("k%d-%03d", k, i), Data: []byte{byte(i)}, OrderingKey: fmt.Sprintf("key-%d", k)}
				if err := b.PublishIngress(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
		}
		const failing = "k2-050"
		var (
			mu       sync.Mutex
			firstAt  = map[string]int{} // id -> attempt of first successful handling
			order    = map[string][]string{}
			failures int
			tooBig   int
			done     = make(chan struct{})
		)
		rctx, rcancel := context.WithCancel(ctx)
		defer rcancel()
		go func() {
			_ = br.ReceiveIngressBatch(rctx, maxBatch, func(_ context.Context, ms []*bus.Message) []error {
				mu.Lock()
				defer mu.Unlock()
				if len(ms) > maxBatch {
					tooBig++
				}
				errs := make([]error, len(ms))
				for i, m := range ms {
					if m.ID == failing && m.DeliveryAttempt == 1 {
						errs[i] = errors.New("transient")
						failures++
						continue
					}
					if _, seen := firstAt[m.ID]; !seen {
						firstAt[m.ID] = m.DeliveryAttempt
						order[m.OrderingKey] = append(order[m.OrderingKey], m.ID)
					}
				}
				if len(firstAt) == keys*perKey {
					select {
					case <-done:
					default:
						close(done)
					}
				}
				return errs
			})
		}()
		select {
		case <-done:
		case <-ctx.Done():
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("only %d of %d messages handled", len(firstAt), keys*perKey)
		}
		rcancel()
		mu.Lock()
		defer mu.Unlock()
		if tooBig > 0 {
			t.Fatalf("%d batches over %d messages", tooBig, maxBatch)
		}
		if failures != 1 || firstAt[failing] != 2 {
			t.Fatalf("failed message: %d failures, handled on attempt %d; want 1 and 2", failures, firstAt[failing])
		}
		for id, attempt := range firstAt {
			if id != failing && attempt != 1 {
				t.Fatalf("message %s redelivered (attempt %d) though it succeeded", id, attempt)
			}
		}
		for k := 0; k < keys; k++ {
			got := order[fmt.Sprintf("key-%d", k)]
			prev := ""
			for _, id := range got {
				if k == 2 && id == failing {
					continue // redelivered later, after its successors
				}
				if id <= prev {
					t.Fatalf("key-%d out of order: %s after %s", k, id, prev)
				}
				prev = id
			}
		}
	})
}

// testPublishDeliveries publishes delivery events for two instances in one
// PublishDeliveries call: each instance gets its own, per key in order.
func testPublishDeliveries(t *testing.T, h Harness) {
	b := makeBus(t, h, orderingOptions)
	bp := b
	checkers := map[string]*orderChecker{}
	for _, inst := range []string{"batch-a", "batch-b"} {
		c := newOrderChecker("pd-" + inst)
		checkers[inst] = c
		startProbed(t, b, inst, c.handler)
	}
	var ds []bus.Delivery
	for i := range checkers["batch-a"].msgs {
		for _, inst := range []string{"batch-a", "batch-b"} {
			ds = append(ds, bus.Delivery{Instance: inst, Message: checkers[inst].msgs[i]})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := bp.PublishDeliveries(ctx, ds); err != nil {
		t.Fatal(err)
	}
	for inst, c := range checkers {
		waitProgress(t, "every delivery event of "+inst, len(c.msgs), c.handledCount)
		c.check(t)
	}
}
