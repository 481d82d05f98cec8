package gcppubsub_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

// publishFailer fails the fake's Publish calls while fail is set, with a
// code the client does not retry.
type publishFailer struct{ fail *atomic.Bool }

func (r publishFailer) React(any) (bool, any, error) {
	if !r.fail.Load() {
		return false, nil, nil
	}
	return true, &pubsubpb.PublishResponse{}, status.Error(codes.PermissionDenied, "injected publish failure")
}

func TestPublishErrorDoesNotStallOrderingKey(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	f := newFake(t, pstest.ServerReactorOption{FuncName: "Publish", Reactor: publishFailer{&fail}})
	cfg := testConfig(t)
	b := f.newBus(t, cfg)
	ctx := ctxT(t)
	const key = "urn:routing:test:recipient"

	fail.Store(true)
	err := b.PublishIngress(ctx, &bus.Message{ID: "lost", Data: []byte("x"), OrderingKey: key})
	if err == nil || !strings.Contains(err.Error(), "injected publish failure") {
		t.Fatalf("PublishIngress while Pub/Sub refuses: %v; want the injected error", err)
	}
	err = b.PublishDelivery(ctx, "node-a", &bus.Message{ID: "lost-event", Data: []byte("x"), OrderingKey: key})
	if err == nil || !strings.Contains(err.Error(), "injected publish failure") {
		t.Fatalf("PublishDelivery while Pub/Sub refuses: %v; want the injected error", err)
	}
	fail.Store(false)

	// The key was paused by the client; later publishes with it go through.
	for _, id := range []string{"first", "second"} {
		if err := b.PublishIngress(ctx, &bus.Message{ID: id, Data: []byte(id), OrderingKey: key}); err != nil {
			t.Fatalf("PublishIngress(%s) after the failure: %v", id, err)
		}
	}
	if err := b.PublishDelivery(ctx, "node-a", &bus.Message{ID: "event", Data: []byte("x"), OrderingKey: key}); err != nil {
		t.Fatalf("PublishDelivery after the failure: %v", err)
	}

	got := make(chan *bus.Message, 10)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveIngress(rctx, func(_ context.Context, m *bus.Message) error {
			got <- m
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ReceiveIngress: %v", err)
		}
	}()
	for _, want := range []string{"first", "second"} {
		select {
		case m := <-got:
			if m.ID != want || m.OrderingKey != key {
				t.Fatalf("received %s with key %q, want %s with key %q", m.ID, m.OrderingKey, want, key)
			}
		case <-ctx.Done():
			t.Fatalf("message %s not received: %v", want, ctx.Err())
		}
	}
}

func TestVerifyRequiresMessageOrdering(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	ctx := ctxT(t)
	for _, id := range []string{cfg.IngressTopic, cfg.DeliveryTopic} {
		if _, err := admin.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(id)}); err != nil {
			t.Fatal(err)
		}
	}
	// An ingress subscription made before ordering was used: otherwise right.
	if _, err := admin.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: subName(cfg.IngressSubscription), Topic: topicName(cfg.IngressTopic), AckDeadlineSeconds: 10,
	}); err != nil {
		t.Fatal(err)
	}
	_, err := gcppubsub.New(ctx, cfg, f.opts...)
	if err == nil || !strings.Contains(err.Error(), "message ordering") || !strings.Contains(err.Error(), "recreated") ||
		!strings.Contains(err.Error(), subName(cfg.IngressSubscription)) {
		t.Fatalf("New with an ingress subscription without ordering: %v; want an error saying it must be recreated", err)
	}
	if getSub(t, admin, cfg.IngressSubscription).GetEnableMessageOrdering() {
		t.Fatalf("the subscription was changed in place")
	}

	// Recreated, it is accepted; a delivery subscription without ordering is not.
	if err := admin.SubscriptionAdminClient.DeleteSubscription(ctx, &pubsubpb.DeleteSubscriptionRequest{Subscription: subName(cfg.IngressSubscription)}); err != nil {
		t.Fatal(err)
	}
	b := f.newBus(t, cfg)
	if !getSub(t, admin, cfg.IngressSubscription).GetEnableMessageOrdering() {
		t.Errorf("recreated ingress subscription has message ordering disabled")
	}
	if _, err := admin.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName("delivery.node-x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: subName("delivery.node-x"), Topic: topicName("delivery.node-x"), AckDeadlineSeconds: 10,
	}); err != nil {
		t.Fatal(err)
	}
	err = b.ReceiveDelivery(ctx, "node-x", func(context.Context, *bus.Message) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "message ordering") || !strings.Contains(err.Error(), "recreated") {
		t.Fatalf("ReceiveDelivery on a subscription without ordering: %v; want an error saying it must be recreated", err)
	}
}

func TestDeadLetterKeepsOrderingKey(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	b := f.newBus(t, testConfig(t))
	ctx := ctxT(t)
	const key = "urn:routing:test:recipient"
	if err := b.PublishIngress(ctx, &bus.Message{ID: "poison", Data: []byte("x"), OrderingKey: key}); err != nil {
		t.Fatal(err)
	}
	// The first delivery fails permanently; the replayed copy succeeds.
	var failed atomic.Bool
	var replayed atomic.Pointer[bus.Message]
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveIngress(rctx, func(_ context.Context, m *bus.Message) error {
			if failed.CompareAndSwap(false, true) {
				return fmt.Errorf("undecodable: %w", bus.ErrPermanent)
			}
			replayed.Store(m)
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ReceiveIngress: %v", err)
		}
	}()
	var dead []bus.DeadMessage
	waitUntil(t, "the dead message", func() bool {
		var err error
		dead, err = b.ListDead(ctx, bus.QueueIngress, 10)
		return err == nil && len(dead) == 1
	})
	if got := dead[0].Message.OrderingKey; got != key {
		t.Fatalf("dead message has OrderingKey %q, want %q", got, key)
	}
	if n, err := b.ReplayDead(ctx, bus.QueueIngress, nil); err != nil || n != 1 {
		t.Fatalf("ReplayDead = %d, %v; want 1, nil", n, err)
	}
	waitUntil(t, "the replayed message", func() bool { return replayed.Load() != nil })
	if m := replayed.Load(); m.ID != "poison" || m.OrderingKey != key {
		t.Errorf("replayed message %s has OrderingKey %q, want poison with %q", m.ID, m.OrderingKey, key)
	}
}
