package gcppubsub_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

// outage fails every Publish RPC with UNAVAILABLE while down is set, and
// records the ids of the messages each RPC carried after watching is set.
type outage struct {
	down     atomic.Bool
	watching atomic.Bool
	mu       sync.Mutex
	seen     map[string]int
}

func (o *outage) React(req any) (bool, any, error) {
	if r, ok := req.(*pubsubpb.PublishRequest); ok && o.watching.Load() {
		o.mu.Lock()
		for _, m := range r.GetMessages() {
			o.seen[m.GetAttributes()[gcppubsub.AttrMessageID]]++
		}
		o.mu.Unlock()
	}
	if o.down.Load() {
		return true, nil, status.Error(codes.Unavailable, "injected outage")
	}
	return false, nil, nil
}

func (o *outage) count(id string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen[id]
}

// A failed ingress publish returns only once the client has given it up:
// when the engine comes back, the message the caller was told failed is
// never sent.
func TestFailedIngressPublishIsNotSentLater(t *testing.T) {
	o := &outage{seen: map[string]int{}}
	f := newFake(t, pstest.ServerReactorOption{FuncName: "Publish", Reactor: o})
	cfg := testConfig(t)
	cfg.IngressPublishTimeout = 500 * time.Millisecond
	d := f.newDriver(t, cfg)

	o.down.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := d.Publish(ctx, driver.QueueIngress, []*driver.Message{{ID: "refused", Data: []byte("x"), OrderingKey: "bob"}})
	cancel()
	if err == nil {
		t.Fatal("publish during an outage succeeded")
	}
	o.watching.Store(true)
	o.down.Store(false)

	// A later publish of the same key goes through; the refused one is
	// never sent again (the client stopped retrying it before Publish
	// returned).
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Publish(ctx, driver.QueueIngress, []*driver.Message{{ID: "accepted", Data: []byte("y"), OrderingKey: "bob"}}); err != nil {
		t.Fatalf("publish after the outage: %v", err)
	}
	if n := o.count("accepted"); n == 0 {
		t.Fatal("the reactor did not see the accepted publish")
	}
	// Past the moment the client would have retried it (its backoff is
	// well under the former 60 s publish timeout).
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if n := o.count("refused"); n > 0 {
			t.Fatalf("the refused message was sent %d times after Publish returned an error", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
