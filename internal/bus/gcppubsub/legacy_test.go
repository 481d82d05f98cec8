package gcppubsub_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

// A deployment moving from the shared delivery topic (a subscription per
// instance filtered on the instance attribute) to a topic per instance runs
// processes of both layouts at once. These tests play the earlier layout's
// processes with a plain Pub/Sub client, doing what they did.

func legacyConfig(t *testing.T) gcppubsub.Config {
	cfg := testConfig(t)
	cfg.LegacySharedDelivery = true
	return cfg
}

// oldInstance makes the filtered subscription an instance of the earlier
// layout makes at start.
func oldInstance(t *testing.T, c *pubsub.Client, cfg gcppubsub.Config, instance string) {
	t.Helper()
	_, err := c.SubscriptionAdminClient.CreateSubscription(ctxT(t), &pubsubpb.Subscription{
		Name:                  subName(cfg.DeliverySubscriptionPrefix + instance),
		Topic:                 topicName(cfg.DeliveryTopic),
		Filter:                `attributes.instance = "` + instance + `"`,
		AckDeadlineSeconds:    10,
		ExpirationPolicy:      &pubsubpb.ExpirationPolicy{Ttl: durationpb.New(cfg.DeliverySubscriptionExpiration)},
		EnableMessageOrdering: true,
	})
	if err != nil {
		t.Fatalf("filtered subscription of %s: %v", instance, err)
	}
}

// oldPublish publishes a delivery event as a pipeline of the earlier
// layout does: to the shared topic, addressed by the instance attribute.
func oldPublish(t *testing.T, c *pubsub.Client, cfg gcppubsub.Config, instance, id string) {
	t.Helper()
	p := c.Publisher(cfg.DeliveryTopic)
	defer p.Stop()
	r := p.Publish(ctxT(t), &pubsub.Message{Data: []byte("old"), Attributes: map[string]string{
		bus.AttrInstance: instance, gcppubsub.AttrMessageID: id}})
	if _, err := r.Get(ctxT(t)); err != nil {
		t.Fatalf("publish %s the earlier way: %v", id, err)
	}
}

// pullIDs pulls what waits on a subscription (acking it) and returns the ids.
func pullIDs(t *testing.T, c *pubsub.Client, sub string, want int) []string {
	t.Helper()
	var ids []string
	waitUntil(t, fmt.Sprintf("%d messages on %s", want, sub), func() bool {
		resp, err := c.SubscriptionAdminClient.Pull(ctxT(t), &pubsubpb.PullRequest{Subscription: subName(sub), MaxMessages: 100})
		if err != nil {
			t.Fatalf("pull %s: %v", sub, err)
		}
		var acks []string
		for _, rm := range resp.GetReceivedMessages() {
			ids = append(ids, rm.GetMessage().GetAttributes()[gcppubsub.AttrMessageID])
			acks = append(acks, rm.GetAckId())
		}
		if len(acks) > 0 {
			if err := c.SubscriptionAdminClient.Acknowledge(ctxT(t), &pubsubpb.AcknowledgeRequest{Subscription: subName(sub), AckIds: acks}); err != nil {
				t.Fatal(err)
			}
		}
		return len(ids) >= want
	})
	return ids
}

// collect receives instance's delivery events into a set until the test ends.
type collected struct {
	mu  sync.Mutex
	ids map[string]int
}

func (c *collected) n() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.ids) }
func (c *collected) has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[id] > 0
}

func receive(t *testing.T, b *bus.Bus, instance string) *collected {
	t.Helper()
	c := &collected{ids: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := b.ReceiveDelivery(ctx, instance, func(_ context.Context, m *bus.Message) error {
			if got := m.Attributes[bus.AttrInstance]; got != instance {
				t.Errorf("%s received %s addressed to %q", instance, m.ID, got)
			}
			c.mu.Lock()
			c.ids[m.ID]++
			c.mu.Unlock()
			return nil
		}); err != nil && !errors.Is(err, bus.ErrClosed) {
			t.Errorf("ReceiveDelivery(%s): %v", instance, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// An instance of the new layout reads both: the events a new pipeline
// sends to its own topic, the events an old pipeline sends through the
// shared topic, and the backlog its filtered subscription already held
// (from before it was upgraded, under the same name).
func TestMigrationNewInstanceReadsBothLayouts(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := legacyConfig(t)
	admin := f.adminClient(t)
	pipeline := f.newBus(t, cfg)

	// The earlier instance "rt-1" left events in its filtered subscription.
	oldInstance(t, admin, cfg, "rt-1")
	oldPublish(t, admin, cfg, "rt-1", "backlog-1")
	oldPublish(t, admin, cfg, "rt-1", "backlog-2")

	rt := f.newBus(t, cfg)
	if err := rt.PrepareDelivery(ctxT(t), "rt-1"); err != nil {
		t.Fatal(err)
	}
	got := receive(t, rt, "rt-1")
	oldPublish(t, admin, cfg, "rt-1", "from-old-pipeline")
	if err := pipeline.PublishDelivery(ctxT(t), "rt-1", &bus.Message{ID: "from-new-pipeline", Data: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "every event", func() bool { return got.n() == 4 })
	for _, id := range []string{"backlog-1", "backlog-2", "from-old-pipeline", "from-new-pipeline"} {
		if !got.has(id) {
			t.Errorf("rt-1 did not receive %s", id)
		}
	}
	// The new pipeline's event went to rt-1's own topic.
	for _, m := range f.srv.Messages() {
		if m.Attributes[gcppubsub.AttrMessageID] == "from-new-pipeline" && m.Topic != topicName("delivery.rt-1") {
			t.Errorf("from-new-pipeline published to %s, want rt-1's own topic", m.Topic)
		}
	}
}

// A new pipeline sends the events of an instance of the earlier layout (no
// topic of its own, a filtered subscription) through the shared topic;
// without LegacySharedDelivery, or for an instance with neither, it drops
// them.
func TestMigrationNewPipelineReachesOldInstance(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := legacyConfig(t)
	admin := f.adminClient(t)
	pipeline := f.newBus(t, cfg)
	oldInstance(t, admin, cfg, "old-rt")

	for i := range 3 {
		if err := pipeline.PublishDelivery(ctxT(t), "old-rt", &bus.Message{ID: fmt.Sprintf("e%d", i), Data: []byte("x"), OrderingKey: "urn:sm:user:ann"}); err != nil {
			t.Fatal(err)
		}
	}
	if ids := pullIDs(t, admin, cfg.DeliverySubscriptionPrefix+"old-rt", 3); len(ids) != 3 || ids[0] != "e0" || ids[2] != "e2" {
		t.Errorf("the earlier instance received %v, want e0 e1 e2 in order", ids)
	}
	if err := pipeline.PublishDelivery(ctxT(t), "nowhere", &bus.Message{ID: "lost", Data: []byte("x")}); err != nil {
		t.Fatalf("publish to an instance with neither layout: %v", err)
	}

	strict := testConfig(t) // LegacySharedDelivery off
	off := f.newBus(t, strict)
	if err := off.PublishDelivery(ctxT(t), "old-rt", &bus.Message{ID: "dropped", Data: []byte("x")}); err != nil {
		t.Fatalf("publish without the earlier layout: %v", err)
	}
	for _, m := range f.srv.Messages() {
		switch m.Attributes[gcppubsub.AttrMessageID] {
		case "lost", "dropped":
			t.Errorf("event %s published to %s, want dropped", m.Attributes[gcppubsub.AttrMessageID], m.Topic)
		}
	}
}

// Moving over keeps the cost: with every instance on the new layout and
// LegacySharedDelivery still on, events go to the instances' own topics
// only, and the shared topic, which bills once per filtered subscription,
// carries none.
func TestMigrationKeepsTrafficOffTheSharedTopic(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := legacyConfig(t)
	pipeline := f.newBus(t, cfg)
	insts := []string{"n-0", "n-1", "n-2"}
	var got []*collected
	for _, inst := range insts {
		rt := f.newBus(t, cfg)
		if err := rt.PrepareDelivery(ctxT(t), inst); err != nil {
			t.Fatal(err)
		}
		got = append(got, receive(t, rt, inst))
	}
	const per = 20
	for i := range per {
		var ds []bus.Delivery
		for _, inst := range insts {
			ds = append(ds, bus.Delivery{Instance: inst, Message: &bus.Message{ID: fmt.Sprintf("%s-%d", inst, i), Data: []byte("x")}})
		}
		if err := pipeline.PublishDeliveries(ctxT(t), ds); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range got {
		waitUntil(t, insts[i]+"'s events", func() bool { return c.n() == per })
	}
	admin := f.adminClient(t)
	if n := billedDeliveries(t, f, admin); n != per*len(insts) {
		t.Errorf("%d deliveries billed for %d events, want one each", n, per*len(insts))
	}
}
