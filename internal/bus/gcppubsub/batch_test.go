package gcppubsub_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// aheadSubscriber serves streaming pulls of one subscription as Pub/Sub
// documents ordered delivery: the messages of an ordering key are sent in
// publish order without waiting for the earlier ones to be acknowledged
// (https://cloud.google.com/pubsub/docs/ordering, "Message redelivery":
// a subscriber receives messages 1, 2 and 3 of a key, and a redelivery of
// 2 also redelivers 3). The fake (pstest) hands out one message of a key
// at a time, the next only once the previous one is acknowledged. Every
// other call goes to the fake.
type aheadSubscriber struct {
	*pstest.GServer
	srv          *pstest.Server
	subscription string // full name
	topic        string // full name

	mu    sync.Mutex
	sent   map[string]bool
	acked  map[string]bool
	leased map[string]bool
}

func (a *aheadSubscriber) StreamingPull(st pubsubpb.Subscriber_StreamingPullServer) error {
	first, err := st.Recv()
	if err != nil {
		return err
	}
	if first.Subscription != a.subscription {
		return fmt.Errorf("this test serves %s only, not %s", a.subscription, first.Subscription)
	}
	go func() { // pings, acks and modacks on the stream: read and drop
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	}()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-st.Context().Done():
			return nil
		case <-tick.C:
		}
		var rms []*pubsubpb.ReceivedMessage
		a.mu.Lock()
		for _, m := range a.srv.Messages() { // in publish order
			if m.Topic != a.topic || a.sent[m.ID] {
				continue
			}
			a.sent[m.ID] = true
			rms = append(rms, &pubsubpb.ReceivedMessage{AckId: m.ID, Message: &pubsubpb.PubsubMessage{
				Data: m.Data, Attributes: m.Attributes, MessageId: m.ID, OrderingKey: m.OrderingKey,
				PublishTime: timestamppb.New(m.PublishTime),
			}})
		}
		a.mu.Unlock()
		if len(rms) == 0 {
			continue
		}
		if err := st.Send(&pubsubpb.StreamingPullResponse{
			ReceivedMessages:       rms,
			SubscriptionProperties: &pubsubpb.StreamingPullResponse_SubscriptionProperties{MessageOrderingEnabled: true},
		}); err != nil {
			return err
		}
	}
}

func (a *aheadSubscriber) Acknowledge(_ context.Context, req *pubsubpb.AcknowledgeRequest) (*emptypb.Empty, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range req.AckIds {
		a.acked[id] = true
	}
	return &emptypb.Empty{}, nil
}

// ModifyAckDeadline records the leased messages: the client leases each
// message it has received (its receipt modack) before handing it over.
func (a *aheadSubscriber) ModifyAckDeadline(_ context.Context, req *pubsubpb.ModifyAckDeadlineRequest) (*emptypb.Empty, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range req.AckIds {
		a.leased[id] = true
	}
	return &emptypb.Empty{}, nil
}

func (a *aheadSubscriber) leasedCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.leased)
}

func (a *aheadSubscriber) ackedCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.acked)
}

// newAheadBus is a portable bus over a driver whose ingress subscription
// is served by an aheadSubscriber (the rest by the fake).
func newAheadBus(t testing.TB) (*bus.Bus, *aheadSubscriber) {
	cfg := testConfig(t)
	ps := pstest.NewServer()
	t.Cleanup(func() { _ = ps.Close() })
	ahead := &aheadSubscriber{
		GServer:      &ps.GServer,
		srv:          ps,
		subscription: "projects/" + testProject + "/subscriptions/" + cfg.IngressSubscription,
		topic:        "projects/" + testProject + "/topics/" + cfg.IngressTopic,
		sent:         map[string]bool{},
		acked:        map[string]bool{},
		leased:       map[string]bool{},
	}
	gs := grpc.NewServer()
	pubsubpb.RegisterPublisherServer(gs, &ps.GServer)
	pubsubpb.RegisterSubscriberServer(gs, ahead)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	f := &fake{srv: ps, opts: []option.ClientOption{
		option.WithEndpoint(ln.Addr().String()),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}}
	return f.newBus(t, cfg), ahead
}

// Under the documented ordered delivery, the messages of one key that the
// client has received are handled together: one batch (one store commit
// in the pipeline) instead of one message per acknowledgement round trip,
// in publish order.
func TestReceivedMessagesOfAKeyFormOneBatch(t *testing.T) {
	// Not parallel: it runs before the parallel suites and adds no load to them.
	b, ahead := newAheadBus(t)
	holds := testConfig(t).MaxOutstanding
	ctx := ctxT(t)

	const n, maxBatch, key = 200, 256, "urn:sm:user:hot"
	for i := range n {
		if err := b.PublishIngress(ctx, &bus.Message{ID: fmt.Sprintf("m%03d", i), Data: []byte{byte(i)}, OrderingKey: key}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu      sync.Mutex
		order   []string
		batches int
		largest int
	)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveIngressBatch(rctx, maxBatch, func(_ context.Context, ms []*bus.Message) []error {
			mu.Lock()
			defer mu.Unlock()
			batches++
			largest = max(largest, len(ms))
			if batches == 1 {
				// Hold the first batch until the client has received as
				// many as it may hold (MaxOutstanding): those it hands
				// over meanwhile wait for the worker together.
				for deadline := time.Now().Add(waitTimeout); ahead.leasedCount() < min(n, holds) && time.Now().Before(deadline); {
					time.Sleep(5 * time.Millisecond)
				}
			}
			for _, m := range ms {
				order = append(order, m.ID)
			}
			return make([]error, len(ms))
		})
	}()
	waitUntil(t, "every message acknowledged", func() bool { return ahead.ackedCount() >= n })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != n {
		t.Fatalf("handled %d messages, want %d (each once)", len(order), n)
	}
	for i, id := range order {
		if want := fmt.Sprintf("m%03d", i); id != want {
			t.Fatalf("handled #%d is %s, want %s (publish order)", i, id, want)
		}
	}
	if largest < 2 || batches > n/2 {
		t.Fatalf("%d messages of one key handled in %d batches (largest %d): the received ones were not handled together", n, batches, largest)
	}
	t.Logf("%d messages of one key in %d batches (largest %d)", n, batches, largest)
}

// BenchmarkOneKeyDocumentedOrdering measures how fast the messages of one
// ordering key go through the driver and the portable bus (received,
// handled in batches, acked) when Pub/Sub delivers them as documented.
// The handler does no work: this is the bus's own cost per message.
func BenchmarkOneKeyDocumentedOrdering(b *testing.B) {
	pb, _ := newAheadBus(b)
	ctx := ctxT(b)
	n := b.N
	ms := make([]*bus.Message, n)
	for i := range ms {
		ms[i] = &bus.Message{ID: fmt.Sprintf("m%07d", i), Data: []byte("x"), OrderingKey: "urn:sm:user:hot"}
	}
	// Published by 32 goroutines: the order does not matter here.
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := range 32 {
		wg.Go(func() {
			for i := w; i < n; i += 32 {
				if err := pb.PublishIngress(ctx, ms[i]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	var handled atomic.Int64
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		done <- pb.ReceiveIngressBatch(rctx, 256, func(_ context.Context, ms []*bus.Message) []error {
			handled.Add(int64(len(ms)))
			return make([]error, len(ms))
		})
	}()
	waitUntil(b, "every message handled", func() bool { return handled.Load() >= int64(n) })
	b.StopTimer()
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
