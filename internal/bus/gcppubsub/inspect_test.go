package gcppubsub_test

import (
	"slices"
	"strings"
	"testing"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/iterator"

	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

// Inspect lists what New would create or update and creates, updates and
// deletes nothing; a subscription New would refuse is an error.
func TestInspectChangesNothing(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	ctx := ctxT(t)
	topics := func() []string {
		var out []string
		it := admin.TopicAdminClient.ListTopics(ctx, &pubsubpb.ListTopicsRequest{Project: "projects/" + testProject})
		for {
			tp, err := it.Next()
			if err == iterator.Done {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, tp.GetName())
		}
	}

	// Only the ingress topic exists, and an ingress subscription with
	// another ack deadline.
	if _, err := admin.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(cfg.IngressTopic)}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: subName(cfg.IngressSubscription), Topic: topicName(cfg.IngressTopic), AckDeadlineSeconds: 60, EnableMessageOrdering: true,
	}); err != nil {
		t.Fatal(err)
	}
	topo, err := gcppubsub.Inspect(ctx, cfg, f.opts...)
	if err != nil {
		t.Fatal(err)
	}
	// The delivery topics are each instance's own: none is shared.
	wantMissing := []string{topicName(cfg.IngressDeadLetterTopic), topicName(cfg.DeliveryDeadLetterTopic)}
	if !slices.Equal(topo.Topics, []string{topicName(cfg.IngressTopic)}) || !slices.Equal(topo.MissingTopics, wantMissing) {
		t.Errorf("topics %v, missing %v", topo.Topics, topo.MissingTopics)
	}
	if !slices.Equal(topo.Subscriptions, []string{subName(cfg.IngressSubscription)}) || len(topo.MissingSubscriptions) != 2 {
		t.Errorf("subscriptions %v, missing %v", topo.Subscriptions, topo.MissingSubscriptions)
	}
	if len(topo.Outdated) != 1 || !strings.Contains(topo.Outdated[0], "ack_deadline_seconds") {
		t.Errorf("outdated %v, want the ingress subscription's ack deadline", topo.Outdated)
	}
	if got := topics(); !slices.Equal(got, []string{topicName(cfg.IngressTopic)}) {
		t.Errorf("topics after Inspect: %v", got)
	}
	if got := getSub(t, admin, cfg.IngressSubscription).GetAckDeadlineSeconds(); got != 60 {
		t.Errorf("Inspect changed the ingress subscription's ack deadline to %d", got)
	}

	// New's resources are all found, up to date.
	f.newBus(t, cfg)
	topo, err = gcppubsub.Inspect(ctx, cfg, f.opts...)
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.Topics) != 3 || len(topo.Subscriptions) != 3 || len(topo.MissingTopics)+len(topo.MissingSubscriptions)+len(topo.Outdated) != 0 {
		t.Errorf("after New: %+v", topo)
	}

	// A subscription of another topic under the ingress subscription's
	// name: New refuses it, so does Inspect.
	other := testConfig(t)
	other.IngressSubscription = "taken"
	if _, err := admin.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: subName("taken"), Topic: topicName(cfg.IngressDeadLetterTopic), AckDeadlineSeconds: 10,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := gcppubsub.Inspect(ctx, other, f.opts...); err == nil || !strings.Contains(err.Error(), "topic is") {
		t.Fatalf("Inspect of a subscription on another topic: %v", err)
	}
}
