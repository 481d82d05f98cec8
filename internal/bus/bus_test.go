package bus

import (
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

func TestBackoff(t *testing.T) {
	b := &Bus{o: Options{MinBackoff: time.Second, MaxBackoff: 10 * time.Second}}
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 60: 10 * time.Second} {
		if got := b.backoff(attempt); got != want {
			t.Errorf("backoff(%d) = %v, want %v", attempt, got, want)
		}
	}
}

func TestOutgoingChecksWhatEveryEngineCarries(t *testing.T) {
	long := strings.Repeat("x", maxAttrValue+1)
	bad := map[string]*Message{
		"no id":              {},
		"id with newline":    {ID: "a\nb"},
		"key with newline":   {ID: "a", OrderingKey: "k\r\nNats-Msg-Id: x"},
		"long value":         {ID: "a", Attributes: map[string]string{"k": long}},
		"nats header":        {ID: "a", Attributes: map[string]string{"Nats-Msg-Id": "x"}},
		"driver header":      {ID: "a", Attributes: map[string]string{"Routing-Ordering-Key": "x"}},
		"pubsub id":          {ID: "a", Attributes: map[string]string{"routing_message_id": "x"}},
		"goog":               {ID: "a", Attributes: map[string]string{"googclient_x": "x"}},
		"dead-letter reason": {ID: "a", Attributes: map[string]string{AttrDeadReason: "x"}},
		"pack marker":        {ID: "a", Attributes: map[string]string{AttrPacked: "2"}},
		"colon in key":       {ID: "a", Attributes: map[string]string{"a:b": "x"}},
		"digit first":        {ID: "a", Attributes: map[string]string{"1a": "x"}},
	}
	for name, m := range bad {
		if _, err := outgoing(m, "", trace.SpanContext{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	attrs := map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	dm, err := outgoing(&Message{ID: "m", Data: []byte("x"), Attributes: attrs, OrderingKey: "k"}, "inst-1", trace.SpanContext{})
	if err != nil {
		t.Fatal(err)
	}
	if dm.Instance != "inst-1" || dm.Attributes[AttrInstance] != "inst-1" || dm.DedupID != "m" || dm.OrderingKey != "k" {
		t.Errorf("delivery event %+v", dm)
	}
	if _, ok := attrs[AttrInstance]; ok {
		t.Error("outgoing changed the caller's attribute map")
	}
}

func TestDeadMessageReasonAndAttempts(t *testing.T) {
	b := &Bus{o: Options{MaxDeliveryAttempts: 7}}
	m := &driver.Message{ID: "m", Data: []byte("x"), Attributes: map[string]string{"k": "v"}, OrderingKey: "key"}
	dead := deadCopy(m, "store down\nreally", 3)
	got := b.toDead(QueueIngress, driver.DeadMessage{ID: "1", Message: *dead})
	if got.Reason != "store down really" || got.Attempts != 3 || got.Message.OrderingKey != "key" || len(got.Message.Attributes) != 1 {
		t.Errorf("dead message %+v", got)
	}
	if m.Attributes[AttrDeadReason] != "" {
		t.Error("deadCopy changed the received message's attributes")
	}
	engine := b.toDead(QueueIngress, driver.DeadMessage{ID: "2", Message: *m})
	if engine.Reason != reasonEngine || engine.Attempts != 7 {
		t.Errorf("engine dead letter without a count: %+v, want the engine reason and the configured attempts", engine)
	}
	counted := b.toDead(QueueIngress, driver.DeadMessage{ID: "3", Message: *m, Attempts: 9})
	if counted.Attempts != 9 {
		t.Errorf("engine dead letter with a count: attempts %d, want 9", counted.Attempts)
	}
	if _, err := replayCopy(QueueDelivery, got, trace.SpanContext{}); err == nil {
		t.Error("replay of a delivery event without an instance accepted")
	}
}

// A delivery receive has DeliveryConcurrency handlers, Concurrency when it
// is not set (as before it existed), never more than MaxOutstanding.
func TestDeliveryConcurrencyDefaults(t *testing.T) {
	for _, tc := range []struct{ set, want int }{{0, 8}, {3, 3}, {500, 100}} {
		o := Options{MaxOutstanding: 100, Concurrency: 8, DeliveryConcurrency: tc.set}.withDefaults()
		if o.DeliveryConcurrency != tc.want || o.Concurrency != 8 {
			t.Errorf("DeliveryConcurrency %d: %d handlers (ingress %d), want %d (ingress 8)", tc.set, o.DeliveryConcurrency, o.Concurrency, tc.want)
		}
	}
}
