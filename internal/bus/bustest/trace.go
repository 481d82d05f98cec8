package bustest

import (
	"context"
	"fmt"
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// RunTraceTests runs the trace context tests through the portable bus over
// h's driver: every engine carries each message's trace.
func RunTraceTests(t *testing.T, h Harness) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"EachMessageContinuesItsTrace", testTraceEachMessage},
		{"DeadLetterAndReplayLink", testTraceDeadLetterReplay},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, h)
		})
	}
}

// tracedBus is makeBus with a tracer provider recording into the returned
// recorder.
func tracedBus(t *testing.T, h Harness, o Options) (*bus.Bus, *tracetest.SpanRecorder, trace.Tracer) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	bo := busOptions(t, o)
	bo.TracerProvider, bo.System = tp, "test"
	b := newBus(t, h.MakeDriver(t, o), bo)
	return b, rec, tp.Tracer("test")
}

// findSpan returns the ended span named name whose messaging.message.id is
// id (nil when there is none).
func findSpan(rec *tracetest.SpanRecorder, name, id string) sdktrace.ReadOnlySpan {
	for _, s := range rec.Ended() {
		if s.Name() != name {
			continue
		}
		for _, a := range s.Attributes() {
			if a.Key == "messaging.message.id" && a.Value.AsString() == id {
				return s
			}
		}
	}
	return nil
}

func waitSpan(t *testing.T, rec *tracetest.SpanRecorder, name, id string) sdktrace.ReadOnlySpan {
	t.Helper()
	var s sdktrace.ReadOnlySpan
	waitFor(t, fmt.Sprintf("span %q of %s", name, id), func() bool {
		s = findSpan(rec, name, id)
		return s != nil
	})
	return s
}

// checkChild fails unless child's parent is parent.
func checkChild(t *testing.T, child sdktrace.ReadOnlySpan, parent trace.SpanContext) {
	t.Helper()
	if child.Parent().TraceID() != parent.TraceID() || child.Parent().SpanID() != parent.SpanID() {
		t.Errorf("span %q: parent %s/%s, want %s/%s", child.Name(), child.Parent().TraceID(), child.Parent().SpanID(), parent.TraceID(), parent.SpanID())
	}
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

// Three ingress messages published under three callers' spans, handled in
// batches, and two delivery events published in one batch, each under its
// own parent: every processing span is the child of its own message's
// producer span, in its own caller's trace, and the handler sees it.
func testTraceEachMessage(t *testing.T, h Harness) {
	b, rec, tracer := tracedBus(t, h, fastRetry)
	callers := map[string]trace.SpanContext{}
	var mu sync.Mutex
	seen := map[string]trace.SpanContext{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveIngressBatch(ctx, 8, func(ctx context.Context, ms []*bus.Message) []error {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range ms {
				seen[m.ID] = trace.SpanContextFromContext(bus.ContextOf(ctx, m))
			}
			return make([]error, len(ms))
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	for _, id := range []string{"t-d", "t-e", "t-f"} {
		cctx, span := tracer.Start(context.Background(), "caller "+id)
		callers[id] = span.SpanContext()
		if err := b.PublishIngress(cctx, &bus.Message{ID: id, Data: []byte("x"), OrderingKey: "k"}); err != nil {
			t.Fatal(err)
		}
		span.End()
	}
	for _, id := range []string{"t-d", "t-e", "t-f"} {
		send := waitSpan(t, rec, "send ingress", id)
		checkChild(t, send, callers[id])
		if send.SpanKind() != trace.SpanKindProducer || attr(send, "messaging.system") != "test" ||
			attr(send, "messaging.destination.name") != bus.QueueIngress || attr(send, "messaging.operation.type") != "send" {
			t.Errorf("producer span %q: kind %v, attributes %v", send.Name(), send.SpanKind(), send.Attributes())
		}
		proc := waitSpan(t, rec, "process ingress", id)
		checkChild(t, proc, send.SpanContext())
		if proc.SpanKind() != trace.SpanKindConsumer || attr(proc, "routing.outcome") != "ack" || attr(proc, "messaging.operation.type") != "process" {
			t.Errorf("processing span: kind %v, attributes %v", proc.SpanKind(), proc.Attributes())
		}
		mu.Lock()
		got := seen[id]
		mu.Unlock()
		if got.SpanID() != proc.SpanContext().SpanID() {
			t.Errorf("%s: the handler saw span %s, want its processing span %s", id, got.SpanID(), proc.SpanContext().SpanID())
		}
	}

	// Delivery events: one batch publish, each event under its own parent.
	if err := b.PrepareDelivery(ctxTimeout(t), "inst-t"); err != nil {
		t.Fatal(err)
	}
	delivered := make(chan trace.SpanContext, 2)
	startDelivery(t, b, "inst-t", func(ctx context.Context, m *bus.Message) error {
		delivered <- trace.SpanContextFromContext(ctx)
		return nil
	})
	var ds []bus.Delivery
	parents := map[string]trace.SpanContext{}
	for _, id := range []string{"d-1", "d-2"} {
		_, span := tracer.Start(context.Background(), "route "+id)
		parents[id] = span.SpanContext()
		ds = append(ds, bus.Delivery{Instance: "inst-t", Message: &bus.Message{ID: id, Data: []byte("y"), Trace: span.SpanContext()}})
		span.End()
	}
	if err := b.PublishDeliveries(ctxTimeout(t), ds); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"d-1", "d-2"} {
		send := waitSpan(t, rec, "send delivery", id)
		checkChild(t, send, parents[id])
		if attr(send, "routing.instance") != "inst-t" {
			t.Errorf("delivery producer span attributes %v", send.Attributes())
		}
		proc := waitSpan(t, rec, "process delivery", id)
		checkChild(t, proc, send.SpanContext())
	}
	for range 2 {
		if sc := <-delivered; !sc.IsValid() {
			t.Error("a delivery handler's context holds no span")
		}
	}
	// The message body never reaches a span.
	for _, s := range rec.Ended() {
		for _, a := range s.Attributes() {
			if v := a.Value.Emit(); v == "x" || v == "y" {
				t.Errorf("span %q records a message body in %s", s.Name(), a.Key)
			}
		}
	}
}

// A message that fails permanently is dead-lettered under its processing
// span; its replay starts a new trace linked to the original one, which
// the redelivered message's processing continues.
func testTraceDeadLetterReplay(t *testing.T, h Harness) {
	b, rec, tracer := tracedBus(t, h, fastRetry)
	var calls sync.Map
	startIngress(t, b, func(ctx context.Context, m *bus.Message) error {
		if _, again := calls.LoadOrStore(m.ID, true); !again {
			return fmt.Errorf("undecodable: %w", bus.ErrPermanent)
		}
		return nil
	})
	cctx, caller := tracer.Start(context.Background(), "caller")
	if err := b.PublishIngress(cctx, &bus.Message{ID: "dl-1", Data: []byte("z")}); err != nil {
		t.Fatal(err)
	}
	caller.End()
	send := waitSpan(t, rec, "send ingress", "dl-1")
	proc := waitSpan(t, rec, "process ingress", "dl-1")
	dead := waitSpan(t, rec, "dead-letter ingress", "dl-1")
	checkChild(t, dead, proc.SpanContext())
	if attr(proc, "routing.outcome") != "dead_lettered" {
		t.Errorf("processing span outcome %q, want dead_lettered", attr(proc, "routing.outcome"))
	}
	waitDead(t, b, bus.QueueIngress, 1)

	rctx, op := tracer.Start(context.Background(), "operator replay")
	n, err := b.ReplayDead(rctx, bus.QueueIngress, nil)
	op.End()
	if err != nil || n != 1 {
		t.Fatalf("ReplayDead: %d, %v", n, err)
	}
	replay := waitSpan(t, rec, "replay ingress", "dl-1")
	checkChild(t, replay, op.SpanContext())
	links := replay.Links()
	if len(links) != 1 || links[0].SpanContext.TraceID() != send.SpanContext().TraceID() || links[0].SpanContext.SpanID() != send.SpanContext().SpanID() {
		t.Errorf("replay span links %v, want the original producer span %s", links, send.SpanContext().SpanID())
	}
	var again sdktrace.ReadOnlySpan
	waitFor(t, "the replayed message's processing span", func() bool {
		for _, s := range rec.Ended() {
			if s.Name() == "process ingress" && s.Parent().SpanID() == replay.SpanContext().SpanID() {
				again = s
				return true
			}
		}
		return false
	})
	if attr(again, "routing.outcome") != "ack" {
		t.Errorf("replayed message outcome %q, want ack", attr(again, "routing.outcome"))
	}
}
