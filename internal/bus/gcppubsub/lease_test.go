package gcppubsub_test

import (
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

// A received message is leased for AckDeadline, and extended by
// AckDeadline: Pub/Sub delivers it again once the lease runs out, so the
// messages an instance held when it died (and every later message of their
// ordering keys) come back AckDeadline after its last extension, not after
// the client's own choice (60s on the stream, then the 99th percentile of
// processing times, up to 10 minutes).
func TestLeaseIsAckDeadline(t *testing.T) {
	// Not parallel: it runs before the parallel suites and adds no load to them.
	f := newFake(t)
	cfg := testConfig(t)
	cfg.AckDeadline = 20 * time.Second // neither the client's 10s minimum nor its 60s stream lease
	d := f.newDriver(t, cfg)
	ctx := ctxT(t)
	sub, err := d.Subscribe(ctx, driver.QueueIngress, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := d.Publish(ctx, driver.QueueIngress, []*driver.Message{{ID: "held", Data: []byte("x"), OrderingKey: "urn:sm:user:bob"}}); err != nil {
		t.Fatal(err)
	}
	ms, err := sub.Receive(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer ms[0].Acker.Ack()
	// The client leases it at once (its receipt modack); read what the fake got.
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, m := range f.srv.Messages() {
			if m.Attributes[gcppubsub.AttrMessageID] != "held" || len(m.Modacks) == 0 {
				continue
			}
			for _, ma := range m.Modacks {
				if got := time.Duration(ma.AckDeadline) * time.Second; got != cfg.AckDeadline {
					t.Fatalf("message leased for %s, want the AckDeadline %s", got, cfg.AckDeadline)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the client never leased the received message")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
