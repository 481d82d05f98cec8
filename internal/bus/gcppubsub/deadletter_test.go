package gcppubsub_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"cloud.google.com/go/pubsub/v2"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

// TestTransientFailureDeadLettersAfterMaxAttempts uses a non-default number
// of attempts, checks the copy the Bus publishes to the dead-letter topic,
// replays it once the cause is fixed, and purges another.
func TestTransientFailureDeadLettersAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	cfg.MaxDeliveryAttempts = 7
	b := f.newBus(t, cfg)

	var mu sync.Mutex
	attempts := map[string][]int{}
	var fixed atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveIngress(ctx, func(_ context.Context, m *bus.Message) error {
			mu.Lock()
			attempts[m.ID] = append(attempts[m.ID], m.DeliveryAttempt)
			mu.Unlock()
			if m.ID == "doomed" {
				return errors.New("bad signature")
			}
			if !fixed.Load() {
				return errors.New("store down")
			}
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ReceiveIngress: %v", err)
		}
	}()
	seen := func(id string) []int { mu.Lock(); defer mu.Unlock(); return slices.Clone(attempts[id]) }

	msg := &bus.Message{ID: "flaky", Data: []byte("payload"), Attributes: map[string]string{"traceparent": "tp"}}
	if err := b.PublishIngress(ctxT(t), msg); err != nil {
		t.Fatal(err)
	}
	if err := b.PublishIngress(ctxT(t), &bus.Message{ID: "doomed", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	var dead []bus.DeadMessage
	waitUntil(t, "two dead messages", func() bool {
		var err error
		dead, err = b.ListDead(ctxT(t), bus.QueueIngress, 0)
		return err == nil && len(dead) == 2
	})
	if got := seen("flaky"); !slices.Equal(got, []int{1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("attempts before dead-lettering %v, want 1..7", got)
	}

	// The copy on the dead-letter topic carries the reason and the attempts.
	var copies int
	for _, m := range f.srv.Messages() {
		if m.Attributes[gcppubsub.AttrMessageID] != "flaky" || m.Attributes[bus.AttrDeadReason] == "" {
			continue
		}
		copies++
		if !strings.Contains(m.Attributes[bus.AttrDeadReason], "store down") || m.Attributes[bus.AttrDeadAttempts] != "7" ||
			m.Attributes["traceparent"] != "tp" || string(m.Data) != "payload" {
			t.Errorf("dead-letter copy %v %q, want reason, 7 attempts, the original attributes and data", m.Attributes, m.Data)
		}
	}
	if copies != 1 {
		t.Errorf("%d dead-letter copies of the message, want 1", copies)
	}

	fixed.Store(true)
	if n, err := b.ReplayDead(ctxT(t), bus.QueueIngress, []string{"flaky"}); err != nil || n != 1 {
		t.Fatalf("ReplayDead = %d, %v; want 1, nil", n, err)
	}
	waitUntil(t, "the replayed message", func() bool { return len(seen("flaky")) == 8 })
	if got := seen("flaky")[7]; got != 1 {
		t.Errorf("replayed message arrives as attempt %d, want 1 (a new message)", got)
	}

	left, err := b.ListDead(ctxT(t), bus.QueueIngress, 0)
	if err != nil || len(left) != 1 || left[0].ID != "doomed" {
		t.Fatalf("after replay ListDead = %v, %v; want only doomed", left, err)
	}
	if n, err := b.PurgeDead(ctxT(t), bus.QueueIngress, []string{"doomed", "unknown"}); err != nil || n != 1 {
		t.Fatalf("PurgeDead = %d, %v; want 1, nil", n, err)
	}
	if left, err := b.ListDead(ctxT(t), bus.QueueIngress, 0); err != nil || len(left) != 0 {
		t.Fatalf("after purge ListDead = %v, %v; want none", left, err)
	}
}

// TestDeadLettersFromPubSub covers messages that Pub/Sub's own dead-letter
// policy forwards (a handler that never returned): they carry no reason,
// and the emulator forwards the same message more than once.
func TestDeadLettersFromPubSub(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	b := f.newBus(t, cfg)
	admin := f.adminClient(t)
	p := admin.Publisher(cfg.DeliveryDeadLetterTopic)
	defer p.Stop()
	publish := func(attrs map[string]string) {
		t.Helper()
		if _, err := p.Publish(ctxT(t), &pubsub.Message{Data: []byte("event"), Attributes: attrs}).Get(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
	stuck := map[string]string{gcppubsub.AttrMessageID: "stuck", bus.AttrInstance: "node-1"}
	publish(stuck)
	publish(stuck) // forwarded again
	publish(map[string]string{gcppubsub.AttrMessageID: "counted", bus.AttrInstance: "node-1",
		"CloudPubSubDeadLetterSourceDeliveryCount": "6", "CloudPubSubDeadLetterSourceSubscription": "delivery-node-1"})

	dead, err := b.ListDead(ctxT(t), bus.QueueDelivery, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 2 {
		t.Fatalf("ListDead = %d messages, want 2 (copies of one message count once)", len(dead))
	}
	byID := map[string]bus.DeadMessage{}
	for _, d := range dead {
		byID[d.ID] = d
	}
	if d := byID["stuck"]; d.Attempts != cfg.MaxDeliveryAttempts || !strings.Contains(d.Reason, "dead-lettered by the engine") {
		t.Errorf("stuck: attempts %d reason %q; want %d and a reason saying the engine dead-lettered it", d.Attempts, d.Reason, cfg.MaxDeliveryAttempts)
	}
	d := byID["counted"]
	if d.Attempts != 6 {
		t.Errorf("counted: attempts %d, want Pub/Sub's count 6", d.Attempts)
	}
	want := map[string]string{bus.AttrInstance: "node-1"}
	if len(d.Message.Attributes) != len(want) || d.Message.Attributes[bus.AttrInstance] != "node-1" {
		t.Errorf("counted: attributes %v, want only %v", d.Message.Attributes, want)
	}

	if n, err := b.PurgeDead(ctxT(t), bus.QueueDelivery, nil); err != nil || n != 2 {
		t.Fatalf("PurgeDead(all) = %d, %v; want 2, nil", n, err)
	}
	if left, err := b.ListDead(ctxT(t), bus.QueueDelivery, 10); err != nil || len(left) != 0 {
		t.Fatalf("after purge ListDead = %v, %v; want none", left, err)
	}
}
