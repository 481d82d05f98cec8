package bustest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// RunDeadLetterTests runs the dead-letter tests through the portable bus
// over h's driver. The subtests run in
// parallel with each other.
func RunDeadLetterTests(t *testing.T, h Harness) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"PoisonAmongGood", testPoisonAmongGood},
		{"TransientFailureExhaustsAttempts", testTransientExhausts},
		{"DeliveryDeadLetter", testDeliveryDeadLetter},
		{"ListGetPurge", testListGetPurge},
		{"ReplayAll", testReplayAll},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, h)
		})
	}
}

// waitDead waits until queue holds n dead messages and returns them.
func waitDead(t *testing.T, dl *bus.Bus, queue string, n int) []bus.DeadMessage {
	t.Helper()
	var got []bus.DeadMessage
	var lastErr error
	waitFor(t, fmt.Sprintf("%d dead messages in %s", n, queue), func() bool {
		got, lastErr = dl.ListDead(ctxTimeout(t), queue, 1000)
		return lastErr == nil && len(got) >= n
	})
	if len(got) != n {
		t.Fatalf("ListDead(%s) returned %d messages, want %d", queue, len(got), n)
	}
	return got
}

func listDead(t *testing.T, dl *bus.Bus, queue string) []bus.DeadMessage {
	t.Helper()
	got, err := dl.ListDead(ctxTimeout(t), queue, 1000)
	if err != nil {
		t.Fatalf("ListDead(%s): %v", queue, err)
	}
	return got
}

// checkDead compares a dead message with the original.
func checkDead(t *testing.T, d bus.DeadMessage, queue string, orig *bus.Message, attempts int, reason string) {
	t.Helper()
	if d.ID == "" {
		t.Errorf("dead message has no ID")
	}
	if d.Queue != queue {
		t.Errorf("dead message queue %q, want %q", d.Queue, queue)
	}
	if d.Message.ID != orig.ID || string(d.Message.Data) != string(orig.Data) {
		t.Errorf("dead message carries id %q data %q, want %q %q", d.Message.ID, d.Message.Data, orig.ID, orig.Data)
	}
	if d.Message.OrderingKey != orig.OrderingKey {
		t.Errorf("dead message carries ordering key %q, want %q (a replay must keep its place in the key's order)", d.Message.OrderingKey, orig.OrderingKey)
	}
	for k, v := range orig.Attributes {
		if d.Message.Attributes[k] != v {
			t.Errorf("dead message attribute %q = %q, want %q", k, d.Message.Attributes[k], v)
		}
	}
	if d.Attempts != attempts {
		t.Errorf("dead message attempts %d, want %d", d.Attempts, attempts)
	}
	if !strings.Contains(d.Reason, reason) {
		t.Errorf("dead message reason %q does not contain %q", d.Reason, reason)
	}
	if !d.DeadAt.IsZero() && time.Since(d.DeadAt) > time.Hour {
		t.Errorf("dead message DeadAt %v is not recent", d.DeadAt)
	}
}

func testPoisonAmongGood(t *testing.T, h Harness) {
	const good = 1000
	b := makeBus(t, h, fastRetry)
	dl := b
	c := newCollector()
	startIngress(t, b, func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		if m.ID == "poison" {
			return fmt.Errorf("decode envelope: %w", bus.ErrPermanent)
		}
		return nil
	})
	poison := &bus.Message{ID: "poison", Data: []byte("not an envelope"), Attributes: map[string]string{"traceparent": "t1"}}
	for i := range good {
		if i == good/2 {
			publishIngress(t, b, poison)
		}
		publishIngress(t, b, &bus.Message{ID: "good-" + strconv.Itoa(i), Data: []byte("ok")})
	}
	waitFor(t, "every good message", func() bool { return c.distinct() == good+1 })
	dead := waitDead(t, dl, bus.QueueIngress, 1)
	checkDead(t, dead[0], bus.QueueIngress, poison, 1, "decode envelope")
	if !quiet(500*time.Millisecond, func() bool { return c.count("poison") > 1 }) {
		t.Errorf("permanently failed message delivered %d times, want 1", c.count("poison"))
	}
	if got := c.count("poison"); got != 1 {
		t.Errorf("permanently failed message delivered %d times, want 1", got)
	}
	if d := listDead(t, dl, bus.QueueDelivery); len(d) != 0 {
		t.Errorf("delivery dead-letter queue holds %d messages, want 0", len(d))
	}
}

func testTransientExhausts(t *testing.T, h Harness) {
	o := fastRetry
	b := makeBus(t, h, o)
	dl := b
	c := newCollector()
	var fixed atomic.Bool
	startIngress(t, b, func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		if !fixed.Load() {
			return errors.New("store unavailable")
		}
		return nil
	})
	msg := &bus.Message{ID: "flaky", Data: []byte("payload"), Attributes: map[string]string{"k": "v"}, OrderingKey: "key-flaky"}
	publishIngress(t, b, msg)
	dead := waitDead(t, dl, bus.QueueIngress, 1)
	checkDead(t, dead[0], bus.QueueIngress, msg, o.MaxDeliveryAttempts, "store unavailable")
	want := make([]int, o.MaxDeliveryAttempts)
	for i := range want {
		want[i] = i + 1
	}
	if !quiet(300*time.Millisecond, func() bool { return c.count("flaky") > o.MaxDeliveryAttempts }) {
		t.Errorf("dead-lettered message delivered again")
	}
	if got := c.attemptsOf("flaky"); !slices.Equal(got, want) {
		t.Errorf("failing message seen with attempts %v, want %v", got, want)
	}

	got, err := dl.GetDead(ctxTimeout(t), bus.QueueIngress, dead[0].ID)
	if err != nil {
		t.Fatalf("GetDead(%s): %v", dead[0].ID, err)
	}
	checkDead(t, got, bus.QueueIngress, msg, o.MaxDeliveryAttempts, "store unavailable")

	// The cause is fixed: a replay delivers it, and the queue no longer holds it.
	fixed.Store(true)
	n, err := dl.ReplayDead(ctxTimeout(t), bus.QueueIngress, []string{dead[0].ID})
	if err != nil || n != 1 {
		t.Fatalf("ReplayDead = %d, %v; want 1, nil", n, err)
	}
	waitFor(t, "the replayed message", func() bool { return c.count("flaky") == o.MaxDeliveryAttempts+1 })
	all := c.all("flaky")
	replayed := all[len(all)-1]
	if string(replayed.Data) != string(msg.Data) || replayed.Attributes["k"] != "v" || replayed.OrderingKey != msg.OrderingKey {
		t.Errorf("replayed message %+v, want data %q, attribute k=v and ordering key %q", replayed, msg.Data, msg.OrderingKey)
	}
	for _, k := range []string{bus.AttrDeadReason, bus.AttrDeadAttempts} {
		if _, ok := replayed.Attributes[k]; ok {
			t.Errorf("replayed message still carries %s", k)
		}
	}
	if _, err := dl.GetDead(ctxTimeout(t), bus.QueueIngress, dead[0].ID); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("GetDead after replay returned %v, want bus.ErrNotFound", err)
	}
	if d := listDead(t, dl, bus.QueueIngress); len(d) != 0 {
		t.Errorf("dead-letter queue holds %d messages after replay, want 0", len(d))
	}
}

func testDeliveryDeadLetter(t *testing.T, h Harness) {
	b := makeBus(t, h, fastRetry)
	dl := b
	c := newCollector()
	var fixed atomic.Bool
	startDelivery(t, b, "inst-1", func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		if !fixed.Load() {
			return fmt.Errorf("bad event: %w", bus.ErrPermanent)
		}
		return nil
	})
	msg := &bus.Message{ID: "event-1", Data: []byte("event")}
	// The subscription may be created asynchronously: publish until the
	// handler has seen an event.
	for i := 0; c.distinct() == 0; i++ {
		if i == 0 {
			publishDelivery(t, b, "inst-1", msg)
		} else {
			m := &bus.Message{ID: msg.ID + "-" + strconv.Itoa(i), Data: msg.Data}
			publishDelivery(t, b, "inst-1", m)
		}
		if i > 100 {
			t.Fatalf("delivery handler never called")
		}
		waitForUpTo(100*time.Millisecond, func() bool { return c.distinct() > 0 })
	}
	n := c.distinct()
	dead := waitDead(t, dl, bus.QueueDelivery, n)
	if d := listDead(t, dl, bus.QueueIngress); len(d) != 0 {
		t.Errorf("ingress dead-letter queue holds %d messages, want 0", len(d))
	}
	for _, d := range dead {
		if d.Queue != bus.QueueDelivery || d.Attempts != 1 || !strings.Contains(d.Reason, "bad event") {
			t.Errorf("dead delivery event %+v, want queue %s, 1 attempt, reason containing %q", d, bus.QueueDelivery, "bad event")
		}
	}
	// Replay goes back to the same instance.
	fixed.Store(true)
	before := c.totalCount()
	replayed, err := dl.ReplayDead(ctxTimeout(t), bus.QueueDelivery, nil)
	if err != nil || replayed != n {
		t.Fatalf("ReplayDead(all) = %d, %v; want %d, nil", replayed, err, n)
	}
	waitFor(t, "replayed events on their instance", func() bool { return c.totalCount() >= before+n })
}

func testListGetPurge(t *testing.T, h Harness) {
	b := makeBus(t, h, fastRetry)
	dl := b
	ctx := ctxTimeout(t)
	if _, err := dl.GetDead(ctx, bus.QueueIngress, "no-such-id"); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("GetDead(unknown) returned %v, want bus.ErrNotFound", err)
	}
	if _, err := dl.ListDead(ctx, "no-such-queue", 10); err == nil {
		t.Errorf("ListDead(unknown queue) returned no error")
	}
	if n, err := dl.PurgeDead(ctx, bus.QueueIngress, nil); err != nil || n != 0 {
		t.Errorf("PurgeDead on an empty queue = %d, %v; want 0, nil", n, err)
	}

	startIngress(t, b, func(ctx context.Context, m *bus.Message) error {
		return fmt.Errorf("reject %s: %w", m.ID, bus.ErrPermanent)
	})
	// One at a time, so the dead-letter order is known.
	const n = 4
	for i := range n {
		publishIngress(t, b, &bus.Message{ID: "p-" + strconv.Itoa(i), Data: []byte{byte(i)}})
		waitDead(t, dl, bus.QueueIngress, i+1)
	}
	all := listDead(t, dl, bus.QueueIngress)
	for i, d := range all {
		if want := "p-" + strconv.Itoa(i); d.Message.ID != want {
			t.Errorf("ListDead[%d] is %s, want %s (oldest first)", i, d.Message.ID, want)
		}
	}
	limited, err := dl.ListDead(ctx, bus.QueueIngress, 2)
	if err != nil || len(limited) != 2 || limited[0].ID != all[0].ID {
		t.Errorf("ListDead(limit 2) = %d messages, %v; want the 2 oldest", len(limited), err)
	}

	if got, err := dl.PurgeDead(ctx, bus.QueueIngress, []string{all[1].ID}); err != nil || got != 1 {
		t.Fatalf("PurgeDead(one) = %d, %v; want 1, nil", got, err)
	}
	if _, err := dl.GetDead(ctx, bus.QueueIngress, all[1].ID); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("GetDead after purge returned %v, want bus.ErrNotFound", err)
	}
	left := listDead(t, dl, bus.QueueIngress)
	if ids := deadIDs(left); !slices.Equal(ids, []string{all[0].ID, all[2].ID, all[3].ID}) {
		t.Errorf("after purging one, ListDead = %v", ids)
	}
	if got, err := dl.PurgeDead(ctx, bus.QueueIngress, nil); err != nil || got != n-1 {
		t.Fatalf("PurgeDead(all) = %d, %v; want %d, nil", got, err, n-1)
	}
	if left := listDead(t, dl, bus.QueueIngress); len(left) != 0 {
		t.Errorf("after PurgeDead(all), ListDead = %v", deadIDs(left))
	}
}

func testReplayAll(t *testing.T, h Harness) {
	b := makeBus(t, h, fastRetry)
	dl := b
	c := newCollector()
	var fixed atomic.Bool
	startIngress(t, b, func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		if !fixed.Load() {
			return fmt.Errorf("not yet: %w", bus.ErrPermanent)
		}
		return nil
	})
	const n = 10
	orig := map[string]string{}
	for i := range n {
		m := &bus.Message{ID: "r-" + strconv.Itoa(i), Data: []byte("data-" + strconv.Itoa(i))}
		orig[m.ID] = string(m.Data)
		publishIngress(t, b, m)
	}
	waitDead(t, dl, bus.QueueIngress, n)
	fixed.Store(true)
	got, err := dl.ReplayDead(ctxTimeout(t), bus.QueueIngress, nil)
	if err != nil || got != n {
		t.Fatalf("ReplayDead(all) = %d, %v; want %d, nil", got, err, n)
	}
	waitFor(t, "every replayed message", func() bool { return c.totalCount() >= 2*n })
	for id, data := range orig {
		if c.count(id) != 2 {
			t.Errorf("%s delivered %d times, want 2 (the failure and the replay)", id, c.count(id))
		}
		ms := c.all(id)
		if len(ms) > 0 && string(ms[len(ms)-1].Data) != data {
			t.Errorf("replayed %s carries %q, want %q", id, ms[len(ms)-1].Data, data)
		}
	}
	if left := listDead(t, dl, bus.QueueIngress); len(left) != 0 {
		t.Errorf("after ReplayDead(all), ListDead = %v", deadIDs(left))
	}
	// Replaying twice does not deliver twice.
	if got, err := dl.ReplayDead(ctxTimeout(t), bus.QueueIngress, nil); err != nil || got != 0 {
		t.Errorf("second ReplayDead(all) = %d, %v; want 0, nil", got, err)
	}
}

func deadIDs(ds []bus.DeadMessage) []string {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.ID
	}
	return ids
}
