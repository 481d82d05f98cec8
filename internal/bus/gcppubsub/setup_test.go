package gcppubsub_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/iterator"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

const waitTimeout = 15 * time.Second

func topicName(id string) string { return "projects/" + testProject + "/topics/" + id }
func subName(id string) string   { return "projects/" + testProject + "/subscriptions/" + id }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// waitUntil polls cond until it holds, failing the test after waitTimeout.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		<-tick.C
	}
}

// adminClient is a plain Pub/Sub client on the fake, for setting up and
// reading back resources independently of the Bus.
func (f *fake) adminClient(t *testing.T) *pubsub.Client {
	t.Helper()
	c, err := pubsub.NewClient(ctxT(t), testProject, f.opts...)
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func getSub(t *testing.T, c *pubsub.Client, id string) *pubsubpb.Subscription {
	t.Helper()
	s, err := c.SubscriptionAdminClient.GetSubscription(ctxT(t), &pubsubpb.GetSubscriptionRequest{Subscription: subName(id)})
	if err != nil {
		t.Fatalf("get subscription %s: %v", id, err)
	}
	return s
}

func subExists(t *testing.T, c *pubsub.Client, id string) bool {
	t.Helper()
	_, err := c.SubscriptionAdminClient.GetSubscription(ctxT(t), &pubsubpb.GetSubscriptionRequest{Subscription: subName(id)})
	if err != nil && status.Code(err) != codes.NotFound {
		t.Fatalf("get subscription %s: %v", id, err)
	}
	return err == nil
}

// checkPolicies compares a subscription's settings with the configuration.
func checkPolicies(t *testing.T, s *pubsubpb.Subscription, cfg gcppubsub.Config, deadTopic string, ttl time.Duration) {
	t.Helper()
	if got, want := s.GetAckDeadlineSeconds(), int32(cfg.AckDeadline/time.Second); got != want {
		t.Errorf("%s ack deadline %ds, want %ds", s.GetName(), got, want)
	}
	dlp := s.GetDeadLetterPolicy()
	if dlp.GetDeadLetterTopic() != topicName(deadTopic) || int(dlp.GetMaxDeliveryAttempts()) != cfg.MaxDeliveryAttempts {
		t.Errorf("%s dead-letter policy %v, want topic %s after %d attempts", s.GetName(), dlp, topicName(deadTopic), cfg.MaxDeliveryAttempts)
	}
	rp := s.GetRetryPolicy()
	if rp.GetMinimumBackoff().AsDuration() != cfg.MinBackoff || rp.GetMaximumBackoff().AsDuration() != cfg.MaxBackoff {
		t.Errorf("%s retry policy %v, want %v..%v", s.GetName(), rp, cfg.MinBackoff, cfg.MaxBackoff)
	}
	if got := s.GetExpirationPolicy().GetTtl().AsDuration(); s.GetExpirationPolicy().GetTtl() == nil && ttl != 0 || got != ttl {
		t.Errorf("%s expiration %v, want TTL %v (0: never)", s.GetName(), s.GetExpirationPolicy(), ttl)
	}
	if !s.GetEnableMessageOrdering() {
		t.Errorf("%s has message ordering disabled", s.GetName())
	}
}

func TestNewCreatesResources(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	cfg.MaxDeliveryAttempts = 9
	cfg.AckDeadline = 25 * time.Second
	f.newBus(t, cfg)
	admin := f.adminClient(t)

	for _, id := range []string{cfg.IngressTopic, cfg.IngressDeadLetterTopic, cfg.DeliveryDeadLetterTopic} {
		if _, err := admin.TopicAdminClient.GetTopic(ctxT(t), &pubsubpb.GetTopicRequest{Topic: topicName(id)}); err != nil {
			t.Errorf("topic %s: %v", id, err)
		}
	}
	// Delivery topics are each instance's own; the shared one of the
	// earlier layout is made only to read that layout.
	if topicExists(t, admin, cfg.DeliveryTopic) {
		t.Errorf("New made the shared delivery topic %s without LegacySharedDelivery", cfg.DeliveryTopic)
	}
	ingress := getSub(t, admin, cfg.IngressSubscription)
	if ingress.GetTopic() != topicName(cfg.IngressTopic) || ingress.GetFilter() != "" {
		t.Errorf("ingress subscription on %q with filter %q", ingress.GetTopic(), ingress.GetFilter())
	}
	checkPolicies(t, ingress, cfg, cfg.IngressDeadLetterTopic, 0)

	for _, dead := range []string{cfg.IngressDeadLetterTopic, cfg.DeliveryDeadLetterTopic} {
		hold := getSub(t, admin, dead+"-hold")
		if hold.GetTopic() != topicName(dead) {
			t.Errorf("hold subscription %s on %s, want %s", hold.GetName(), hold.GetTopic(), topicName(dead))
		}
		if hold.GetDeadLetterPolicy() != nil || hold.GetExpirationPolicy().GetTtl() != nil {
			t.Errorf("hold subscription %s has dead-letter policy %v, expiration %v; want none, never",
				hold.GetName(), hold.GetDeadLetterPolicy(), hold.GetExpirationPolicy())
		}
		if got := hold.GetMessageRetentionDuration().AsDuration(); got != 7*24*time.Hour {
			t.Errorf("hold subscription %s retains messages %v, want 7 days", hold.GetName(), got)
		}
	}

	// A second Bus on the same resources verifies them and changes nothing.
	f.newBus(t, cfg)
	checkPolicies(t, getSub(t, admin, cfg.IngressSubscription), cfg, cfg.IngressDeadLetterTopic, 0)
}

func TestDeliveryTopicPerInstance(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	b := f.newBus(t, cfg)
	admin := f.adminClient(t)

	type seen struct {
		mu  sync.Mutex
		ids []string
	}
	var a, bb seen
	rec := func(s *seen) bus.Handler {
		return func(_ context.Context, m *bus.Message) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.ids = append(s.ids, m.ID)
			if m.Attributes[bus.AttrInstance] == "" {
				return fmt.Errorf("event %s without instance attribute: %w", m.ID, bus.ErrPermanent)
			}
			return nil
		}
	}
	count := func(s *seen) int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.ids) }
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, inst := range []string{"node-a", "node-b"} {
		if err := b.PrepareDelivery(ctxT(t), inst); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []struct {
		inst string
		s    *seen
	}{{"node-a", &a}, {"node-b", &bb}} {
		wg.Go(func() {
			if err := b.ReceiveDelivery(ctx, r.inst, rec(r.s)); err != nil {
				t.Errorf("ReceiveDelivery(%s): %v", r.inst, err)
			}
		})
	}
	defer wg.Wait()
	defer cancel()

	// Every event for B is published before the last one for A: once A has
	// its last event and B all of its, any leak to A would have shown.
	const n = 100
	for i := range n {
		if err := b.PublishDelivery(ctxT(t), "node-b", &bus.Message{ID: fmt.Sprintf("b-%d", i), Data: []byte("b")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.PublishDelivery(ctxT(t), "node-a", &bus.Message{ID: "a-last", Data: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "A's event and all of B's", func() bool { return count(&a) >= 1 && count(&bb) >= n })
	a.mu.Lock()
	for _, id := range a.ids {
		if id != "a-last" {
			t.Errorf("node-a received %s, addressed to node-b", id)
		}
	}
	a.mu.Unlock()

	// Each event went to its instance's topic only, which has one
	// subscription and no filter.
	for _, m := range f.srv.Messages() {
		want := topicName("delivery." + m.Attributes[bus.AttrInstance])
		if m.Topic != want {
			t.Errorf("event %s for %s published to %s, want %s", m.Attributes[gcppubsub.AttrMessageID], m.Attributes[bus.AttrInstance], m.Topic, want)
		}
	}
	for _, inst := range []string{"node-a", "node-b"} {
		sub := getSub(t, admin, "delivery."+inst)
		if sub.GetFilter() != "" {
			t.Errorf("%s: filter %q, want none", sub.GetName(), sub.GetFilter())
		}
		if sub.GetTopic() != topicName("delivery."+inst) {
			t.Errorf("%s on %s, want %s", sub.GetName(), sub.GetTopic(), topicName("delivery."+inst))
		}
		if got := topicSubscriptions(t, admin, "delivery."+inst); len(got) != 1 {
			t.Errorf("topic delivery.%s has subscriptions %v, want its own only", inst, got)
		}
		checkPolicies(t, sub, cfg, cfg.DeliveryDeadLetterTopic, cfg.DeliverySubscriptionExpiration)
	}
	if err := b.CheckSetup(ctxT(t)); err != nil {
		t.Errorf("CheckDeadLetterSetup with two delivery receivers: %v", err)
	}
}

func topicExists(t *testing.T, c *pubsub.Client, id string) bool {
	t.Helper()
	_, err := c.TopicAdminClient.GetTopic(ctxT(t), &pubsubpb.GetTopicRequest{Topic: topicName(id)})
	if err != nil && status.Code(err) != codes.NotFound {
		t.Fatalf("get topic %s: %v", id, err)
	}
	return err == nil
}

// topicSubscriptions lists the names of the subscriptions attached to topic id.
func topicSubscriptions(t *testing.T, c *pubsub.Client, id string) []string {
	t.Helper()
	var out []string
	it := c.TopicAdminClient.ListTopicSubscriptions(ctxT(t), &pubsubpb.ListTopicSubscriptionsRequest{Topic: topicName(id)})
	for {
		name, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return out
		}
		if err != nil {
			t.Fatalf("list subscriptions of %s: %v", id, err)
		}
		out = append(out, name)
	}
}

func TestCloseDeletesOwnDeliveryTopic(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	other := f.newBus(t, cfg) // another process on the same project
	b := f.newBus(t, cfg)
	if err := other.PrepareDelivery(ctxT(t), "staying"); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveDelivery(context.Background(), "leaving", func(context.Context, *bus.Message) error { return nil })
	}()
	waitUntil(t, "the instance's subscription", func() bool { return subExists(t, admin, "delivery.leaving") })
	if !topicExists(t, admin, "delivery.leaving") {
		t.Fatal("the instance's subscription exists without its topic")
	}
	// A publish to an instance without a topic (it has left, or never
	// came) makes nothing: the event is dropped, as Pub/Sub drops a
	// message to a topic without subscriptions.
	if err := b.PublishDelivery(ctxT(t), "gone", &bus.Message{ID: "e1", Data: []byte("x")}); err != nil {
		t.Fatalf("PublishDelivery to an instance without a topic: %v", err)
	}
	if topicExists(t, admin, "delivery.gone") || subExists(t, admin, "delivery.gone") {
		t.Errorf("PublishDelivery made a topic or subscription for an instance without one")
	}
	if n := len(f.srv.Messages()); n != 0 {
		t.Errorf("%d messages published for an instance without a topic, want 0", n)
	}

	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, bus.ErrClosed) {
			t.Errorf("ReceiveDelivery after Close returned %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("ReceiveDelivery did not return after Close")
	}
	if subExists(t, admin, "delivery.leaving") || topicExists(t, admin, "delivery.leaving") {
		t.Errorf("Close left the instance's delivery subscription or topic")
	}
	if !subExists(t, admin, "delivery.staying") || !topicExists(t, admin, "delivery.staying") {
		t.Errorf("Close deleted the delivery topic or subscription of another instance")
	}
	if !subExists(t, admin, cfg.IngressSubscription) {
		t.Errorf("Close deleted the shared ingress subscription")
	}
	if err := other.Ping(ctxT(t)); err != nil {
		t.Errorf("the other bus after Close of the first: %v", err)
	}
}

func TestVerifyUpdatesMutableSettings(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	ctx := ctxT(t)
	if _, err := admin.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(cfg.IngressTopic)}); err != nil {
		t.Fatal(err)
	}
	// An ingress subscription made by hand: other ack deadline, no policies,
	// an expiration.
	_, err := admin.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name:                  subName(cfg.IngressSubscription),
		Topic:                 topicName(cfg.IngressTopic),
		AckDeadlineSeconds:    60,
		ExpirationPolicy:      &pubsubpb.ExpirationPolicy{Ttl: durationpb.New(48 * time.Hour)},
		EnableMessageOrdering: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.newBus(t, cfg)
	checkPolicies(t, getSub(t, admin, cfg.IngressSubscription), cfg, cfg.IngressDeadLetterTopic, 0)
}

func TestVerifyRejectsImmutableDifferences(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	ctx := ctxT(t)
	for _, id := range []string{"elsewhere", cfg.DeliveryTopic} {
		if _, err := admin.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(id)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: subName(cfg.IngressSubscription), Topic: topicName("elsewhere"), AckDeadlineSeconds: 10,
	}); err != nil {
		t.Fatal(err)
	}
	_, err := gcppubsub.New(ctx, cfg, f.opts...)
	if err == nil || !strings.Contains(err.Error(), "topic is") || !strings.Contains(err.Error(), cfg.IngressSubscription) {
		t.Fatalf("New with the ingress subscription on another topic: %v; want an error naming the topic difference", err)
	}

	// The same for an instance's filtered subscription on the shared
	// topic (read under LegacySharedDelivery) with another filter.
	if err := admin.SubscriptionAdminClient.DeleteSubscription(ctx, &pubsubpb.DeleteSubscriptionRequest{Subscription: subName(cfg.IngressSubscription)}); err != nil {
		t.Fatal(err)
	}
	cfg.LegacySharedDelivery = true
	if _, err := admin.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: subName("delivery-node-x"), Topic: topicName(cfg.DeliveryTopic), AckDeadlineSeconds: 10,
		Filter: `attributes.instance = "node-y"`,
	}); err != nil {
		t.Fatal(err)
	}
	b := f.newBus(t, cfg)
	err = b.ReceiveDelivery(ctx, "node-x", func(context.Context, *bus.Message) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "filter is") {
		t.Fatalf("ReceiveDelivery on a subscription with another filter: %v; want an error naming the filter", err)
	}
}

func TestCheckDeadLetterSetupReportsMissingPolicies(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	b := f.newBus(t, cfg)
	admin := f.adminClient(t)
	ctx := ctxT(t)
	// The fake has no IAM: the permission checks are skipped, not failed.
	if err := b.CheckSetup(ctx); err != nil {
		t.Fatalf("CheckDeadLetterSetup on a fresh setup: %v", err)
	}

	_, err := admin.SubscriptionAdminClient.UpdateSubscription(ctx, &pubsubpb.UpdateSubscriptionRequest{
		Subscription: &pubsubpb.Subscription{Name: subName(cfg.IngressSubscription)},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"dead_letter_policy", "retry_policy"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.SubscriptionAdminClient.DeleteSubscription(ctx, &pubsubpb.DeleteSubscriptionRequest{
		Subscription: subName(cfg.DeliveryDeadLetterTopic + "-hold"),
	}); err != nil {
		t.Fatal(err)
	}
	err = b.CheckSetup(ctx)
	if err == nil {
		t.Fatal("CheckDeadLetterSetup reported nothing with policies and a hold subscription missing")
	}
	for _, want := range []string{
		cfg.IngressSubscription + " has no dead-letter policy",
		cfg.IngressSubscription + " has no retry policy",
		"hold subscription " + subName(cfg.DeliveryDeadLetterTopic+"-hold") + " does not exist",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CheckDeadLetterSetup error %q does not say %q", err, want)
		}
	}
}

func TestPingFailsWhenPubSubIsDown(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	b := f.newBus(t, testConfig(t))
	if err := b.Ping(ctxT(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	f.close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := b.Ping(ctx); err == nil {
		t.Fatal("Ping succeeded with the server down")
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*gcppubsub.Config)
		want   string
	}{
		{"no project", func(c *gcppubsub.Config) { c.ProjectID = "" }, "ProjectID"},
		{"short ack deadline", func(c *gcppubsub.Config) { c.AckDeadline = 2 * time.Second }, "AckDeadline"},
		{"few attempts", func(c *gcppubsub.Config) { c.MaxDeliveryAttempts = 3 }, "MaxDeliveryAttempts"},
		{"short expiration", func(c *gcppubsub.Config) { c.DeliverySubscriptionExpiration = time.Hour }, "DeliverySubscriptionExpiration"},
		{"backoff order", func(c *gcppubsub.Config) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }, "MinBackoff"},
		{"bad topic id", func(c *gcppubsub.Config) { c.IngressTopic = "goog-topic" }, "IngressTopic"},
		{"same topics", func(c *gcppubsub.Config) { c.IngressDeadLetterTopic = c.IngressTopic }, "four different topics"},
		{"topic named like an instance's", func(c *gcppubsub.Config) { c.DeliveryDeadLetterTopic = "delivery.dlq" }, "DeliveryDeadLetterTopic"},
		{"subscription named like an instance's", func(c *gcppubsub.Config) { c.IngressSubscription = "delivery.pipeline" }, "IngressSubscription"},
		{"filtered subscriptions named like instances' topics", func(c *gcppubsub.Config) { c.DeliverySubscriptionPrefix = "delivery.x-" }, "DeliverySubscriptionPrefix"},
		{"instances' topics named like filtered subscriptions", func(c *gcppubsub.Config) { c.DeliverySubscriptionPrefix = "deliv" }, "DeliverySubscriptionPrefix"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.change(&cfg)
			// Validation fails before any connection: no endpoint is needed.
			_, err := gcppubsub.New(ctxT(t), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

// TestEmulatorHostEnvironment connects through PUBSUB_EMULATOR_HOST alone.
// Not parallel: it sets the process environment.
func TestEmulatorHostEnvironment(t *testing.T) {
	f := newFake(t)
	t.Setenv("PUBSUB_EMULATOR_HOST", f.srv.Addr)
	b := (&fake{srv: f.srv, close: f.close}).newBus(t, testConfig(t))
	if err := b.PublishIngress(ctxT(t), &bus.Message{ID: "via-env", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() {
		done <- b.ReceiveIngress(ctx, func(_ context.Context, m *bus.Message) error {
			select {
			case got <- m.ID:
			default:
			}
			return nil
		})
	}()
	select {
	case id := <-got:
		if id != "via-env" {
			t.Errorf("received %s, want via-env", id)
		}
	case <-time.After(waitTimeout):
		t.Fatal("no message through the emulator address from the environment")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ReceiveIngress: %v", err)
	}
}

// A pipeline's events follow an instance that leaves and comes back under
// the same id: dropped while it has no topic, delivered again once it has
// made its topic anew (the publisher of the deleted topic is replaced).
func TestPublishFollowsAnInstanceThatComesBack(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	pipeline := f.newBus(t, cfg)
	first := f.newBus(t, cfg)
	if err := first.PrepareDelivery(ctxT(t), "rt-x"); err != nil {
		t.Fatal(err)
	}
	got := receive(t, first, "rt-x")
	if err := pipeline.PublishDelivery(ctxT(t), "rt-x", &bus.Message{ID: "before", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the first event", func() bool { return got.has("before") })
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pipeline.PublishDelivery(ctxT(t), "rt-x", &bus.Message{ID: "while-away", Data: []byte("x")}); err != nil {
		t.Fatalf("publish while the instance is away: %v", err)
	}
	second := f.newBus(t, cfg)
	if err := second.PrepareDelivery(ctxT(t), "rt-x"); err != nil {
		t.Fatal(err)
	}
	again := receive(t, second, "rt-x")
	if err := pipeline.PublishDelivery(ctxT(t), "rt-x", &bus.Message{ID: "after", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the event after the instance came back", func() bool { return again.has("after") })
	if again.has("while-away") {
		t.Error("an event published while the instance had no topic was delivered")
	}
}
