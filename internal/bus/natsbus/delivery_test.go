package natsbus

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/bustest"
)

// Each delivery event is stored once, on its instance's subject, and
// delivered by that instance's consumer only: the server's own counts show
// that every consumer was handed exactly its instance's events (none of
// another's, so the work and traffic per event do not grow with the number
// of instances), and that the stream held each event once.
func TestDeliveryConsumerGetsOnlyItsInstance(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, nc *nats.Conn) {
		cfg := testConfig(bustest.Options{})
		b := bus.New(newTestDriver(t, nc, cfg), busOptions(bustest.Options{}))
		t.Cleanup(func() { _ = b.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		want := map[string]int{"rt-a": 5, "rt-b": 7, "rt-c": 11}
		for inst := range want {
			if err := b.PrepareDelivery(ctx, inst); err != nil {
				t.Fatal(err)
			}
		}

		// The stream, before anyone reads: one message per event, on the
		// subject of the instance it is addressed to.
		var ds []bus.Delivery
		for inst, n := range want {
			for i := range n {
				ds = append(ds, bus.Delivery{Instance: inst, Message: &bus.Message{ID: fmt.Sprintf("%s-%d", inst, i), Data: []byte("x")}})
			}
		}
		// One pack per instance would hide the per-event count: one
		// message per event here.
		for _, d := range ds {
			if err := b.PublishDelivery(ctx, d.Instance, d.Message); err != nil {
				t.Fatal(err)
			}
		}
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		stream, err := js.Stream(ctx, cfg.SubjectPrefix+"-delivery")
		if err != nil {
			t.Fatal(err)
		}
		info, err := stream.Info(ctx, jetstream.WithSubjectFilter(cfg.SubjectPrefix+".delivery.>"))
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != uint64(len(ds)) {
			t.Errorf("delivery stream holds %d messages for %d events", info.State.Msgs, len(ds))
		}
		for inst, n := range want {
			if got := info.State.Subjects[cfg.SubjectPrefix+".delivery."+inst]; got != uint64(n) {
				t.Errorf("subject of %s holds %d messages, want %d", inst, got, n)
			}
		}

		// Each instance reads: its consumer is handed its events, once each.
		var mu sync.Mutex
		handled := map[string]int{}
		rctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for inst := range want {
			wg.Go(func() {
				err := b.ReceiveDelivery(rctx, inst, func(_ context.Context, m *bus.Message) error {
					if m.Attributes[bus.AttrInstance] != inst {
						t.Errorf("%s handed %s, addressed to %s", inst, m.ID, m.Attributes[bus.AttrInstance])
					}
					mu.Lock()
					handled[inst]++
					mu.Unlock()
					return nil
				})
				if err != nil {
					t.Errorf("ReceiveDelivery(%s): %v", inst, err)
				}
			})
		}
		total := func() int {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, c := range handled {
				n += c
			}
			return n
		}
		waitUntil(t, "every event", 20*time.Second, func() bool { return total() >= len(ds) })
		for inst, n := range want {
			c, err := js.Consumer(ctx, cfg.SubjectPrefix+"-delivery", cfg.SubjectPrefix+"-instance-"+inst)
			if err != nil {
				t.Fatal(err)
			}
			ci, err := c.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ci.Config.FilterSubject != cfg.SubjectPrefix+".delivery."+inst {
				t.Errorf("consumer of %s filters %q", inst, ci.Config.FilterSubject)
			}
			// Delivered.Consumer counts every message the server sent
			// this consumer, redeliveries included.
			if ci.Delivered.Consumer != uint64(n) {
				t.Errorf("server delivered %d messages to %s's consumer, want %d (its own events, once each)", ci.Delivered.Consumer, inst, n)
			}
		}
		stop()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for inst, n := range want {
			if handled[inst] != n {
				t.Errorf("%s handled %d events, want %d", inst, handled[inst], n)
			}
		}
	})
}
