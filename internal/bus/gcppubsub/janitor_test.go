package gcppubsub_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

// fakePresence is the presence of realtime instances, set by the test.
type fakePresence struct {
	mu      sync.Mutex
	present map[string]bool
	err     error
}

func newFakePresence(instances ...string) *fakePresence {
	p := &fakePresence{present: map[string]bool{}}
	for _, i := range instances {
		p.present[i] = true
	}
	return p
}

func (p *fakePresence) set(instance string, present bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.present[instance] = present
}

func (p *fakePresence) Present(_ context.Context, instances []string) ([]bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return nil, p.err
	}
	out := make([]bool, len(instances))
	for i, inst := range instances {
		out[i] = p.present[inst]
	}
	return out, nil
}

// clock is a settable time for the janitor.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (f *fake) newJanitor(t *testing.T, cfg gcppubsub.Config, p gcppubsub.InstancePresence, c *clock, ttl time.Duration) *gcppubsub.Janitor {
	t.Helper()
	j, err := gcppubsub.NewJanitor(ctxT(t), cfg, gcppubsub.JanitorOptions{TopicTTL: ttl, Presence: p, Now: c.Now}, f.opts...)
	if err != nil {
		t.Fatalf("NewJanitor: %v", err)
	}
	t.Cleanup(func() { _ = j.Close() })
	return j
}

func sweep(t *testing.T, j *gcppubsub.Janitor) gcppubsub.SweepReport {
	t.Helper()
	r, err := j.Sweep(ctxT(t))
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	return r
}

// deleteSub deletes a subscription, as Pub/Sub's expiration policy does
// with one unread for DeliverySubscriptionExpiration (the fake keeps the
// policy without applying it).
func deleteSub(t *testing.T, f *fake, id string) {
	t.Helper()
	admin := f.adminClient(t)
	if err := admin.SubscriptionAdminClient.DeleteSubscription(ctxT(t), &pubsubpb.DeleteSubscriptionRequest{Subscription: subName(id)}); err != nil {
		t.Fatalf("delete subscription %s: %v", id, err)
	}
}

// The janitor deletes the topic of an instance absent from presence for
// TopicTTL whose subscription is gone, and nothing else: not the topic of
// an instance present, nor of one absent for less, nor one whose
// subscription still exists, nor any other topic. Sweeps are idempotent.
func TestJanitorRemovesOnlyTopicsOfInstancesGone(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	b := f.newBus(t, cfg)
	for _, inst := range []string{"live", "idle", "dead", "back"} {
		if err := b.PrepareDelivery(ctxT(t), inst); err != nil {
			t.Fatal(err)
		}
	}
	// Topics that are not delivery topics, one of them close in name.
	for _, id := range []string{"delivery", "delivery-other", "unrelated"} {
		if _, err := admin.TopicAdminClient.CreateTopic(ctxT(t), &pubsubpb.Topic{Name: topicName(id)}); err != nil {
			t.Fatal(err)
		}
	}
	// "dead" died: its subscription expired. "idle" is absent from presence
	// but its subscription exists (still read, or not yet expired).
	deleteSub(t, f, "delivery.dead")
	p := newFakePresence("live")
	c := &clock{now: time.Unix(1_700_000_000, 0)}
	const ttl = 2 * time.Hour
	j := f.newJanitor(t, cfg, p, c, ttl)

	// First sweep: absent instances are found absent now.
	r := sweep(t, j)
	if r.Topics != 4 || r.Present != 1 || r.Waiting != 3 || len(r.Removed) != 0 {
		t.Fatalf("first sweep %+v, want 4 topics, 1 present, 3 waiting, none removed", r)
	}
	// "back" comes back before its TTL: its label goes, and it starts over.
	c.add(ttl / 2)
	p.set("back", true)
	if r := sweep(t, j); r.Present != 2 || len(r.Removed) != 0 {
		t.Fatalf("sweep with back present %+v", r)
	}
	p.set("back", false)
	if r := sweep(t, j); len(r.Removed) != 0 {
		t.Fatalf("sweep after back left again %+v", r)
	}

	// Just before TTL nothing goes; at TTL only "dead" does.
	c.add(ttl/2 - time.Second)
	if r := sweep(t, j); len(r.Removed) != 0 {
		t.Fatalf("sweep before the TTL removed %v", r.Removed)
	}
	c.add(time.Second)
	r = sweep(t, j)
	if !slices.Equal(r.Removed, []string{"delivery.dead"}) || r.InUse != 1 || r.Present != 1 || r.Waiting != 1 {
		t.Fatalf("sweep at the TTL %+v, want delivery.dead removed, idle in use, live present, back waiting", r)
	}
	if topicExists(t, admin, "delivery.dead") {
		t.Fatal("delivery.dead still exists")
	}
	for _, id := range []string{"delivery.live", "delivery.idle", "delivery.back", "delivery", "delivery-other", "unrelated",
		cfg.IngressTopic, cfg.DeliveryDeadLetterTopic} {
		if !topicExists(t, admin, id) {
			t.Errorf("the janitor deleted topic %s", id)
		}
	}

	// Idempotent: two janitors sweeping at once, later, delete each topic
	// once between them and report no error.
	deleteSub(t, f, "delivery.idle")
	deleteSub(t, f, "delivery.back")
	c.add(ttl)
	j2 := f.newJanitor(t, cfg, p, c, ttl)
	var wg sync.WaitGroup
	reports := make([]gcppubsub.SweepReport, 2)
	for i, jj := range []*gcppubsub.Janitor{j, j2} {
		wg.Go(func() { reports[i] = sweep(t, jj) })
	}
	wg.Wait()
	removed := append(reports[0].Removed, reports[1].Removed...)
	slices.Sort(removed)
	removed = slices.Compact(removed)
	if !slices.Equal(removed, []string{"delivery.back", "delivery.idle"}) {
		t.Fatalf("concurrent sweeps removed %v, want delivery.back and delivery.idle", removed)
	}
	if r := sweep(t, j); r.Topics != 1 || len(r.Removed) != 0 {
		t.Fatalf("sweep after everything absent was removed %+v, want only delivery.live left", r)
	}
}

// A presence registry that does not answer deletes nothing.
func TestJanitorDeletesNothingWithoutPresence(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	b := f.newBus(t, cfg)
	if err := b.PrepareDelivery(ctxT(t), "gone"); err != nil {
		t.Fatal(err)
	}
	deleteSub(t, f, "delivery.gone")
	p := newFakePresence()
	c := &clock{now: time.Unix(1_700_000_000, 0)}
	j := f.newJanitor(t, cfg, p, c, time.Hour)
	sweep(t, j)
	c.add(2 * time.Hour)
	p.mu.Lock()
	p.err = errors.New("presence down")
	p.mu.Unlock()
	if _, err := j.Sweep(ctxT(t)); err == nil {
		t.Fatal("Sweep with presence down reported no error")
	}
	if !topicExists(t, admin, "delivery.gone") {
		t.Fatal("the janitor deleted a topic without knowing presence")
	}
}

// An instance that comes back takes its absence label off and, if its
// topic was deleted meanwhile, makes it again with its subscription.
func TestReturningInstanceRemakesItsTopic(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	b := f.newBus(t, cfg)
	for _, inst := range []string{"labelled", "removed"} {
		if err := b.PrepareDelivery(ctxT(t), inst); err != nil {
			t.Fatal(err)
		}
		deleteSub(t, f, "delivery."+inst)
	}
	c := &clock{now: time.Unix(1_700_000_000, 0)}
	j := f.newJanitor(t, cfg, newFakePresence(), c, time.Hour)
	sweep(t, j)
	c.add(time.Hour)
	if r := sweep(t, j); len(r.Removed) != 2 {
		t.Fatalf("sweep %+v, want both removed", r)
	}
	// Labelled only: make the topic again by hand with a label, as the
	// janitor leaves it before the TTL.
	if _, err := admin.TopicAdminClient.CreateTopic(ctxT(t), &pubsubpb.Topic{Name: topicName("delivery.labelled"),
		Labels: map[string]string{"routing_absent_since": "1700000000", "team": "chat"}}); err != nil {
		t.Fatal(err)
	}
	b2 := f.newBus(t, cfg)
	for _, inst := range []string{"labelled", "removed"} {
		if err := b2.PrepareDelivery(ctxT(t), inst); err != nil {
			t.Fatal(err)
		}
		if !topicExists(t, admin, "delivery."+inst) || getSub(t, admin, "delivery."+inst).GetTopic() != topicName("delivery."+inst) {
			t.Errorf("%s: topic or subscription not made again", inst)
		}
	}
	top, err := admin.TopicAdminClient.GetTopic(ctxT(t), &pubsubpb.GetTopicRequest{Topic: topicName("delivery.labelled")})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := top.GetLabels()["routing_absent_since"]; ok || top.GetLabels()["team"] != "chat" {
		t.Errorf("labels after the instance came back: %v, want the absence label off and the others kept", top.GetLabels())
	}
}

// A subscription left detached by its topic's deletion is made again on
// the instance's topic when the instance subscribes.
func TestDetachedDeliverySubscriptionIsMadeAgain(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	cfg := testConfig(t)
	admin := f.adminClient(t)
	b := f.newBus(t, cfg)
	if err := b.PrepareDelivery(ctxT(t), "racer"); err != nil {
		t.Fatal(err)
	}
	if err := admin.TopicAdminClient.DeleteTopic(ctxT(t), &pubsubpb.DeleteTopicRequest{Topic: topicName("delivery.racer")}); err != nil {
		t.Fatal(err)
	}
	b2 := f.newBus(t, cfg)
	if err := b2.PrepareDelivery(ctxT(t), "racer"); err != nil {
		t.Fatalf("PrepareDelivery with a detached subscription: %v", err)
	}
	if got := getSub(t, admin, "delivery.racer").GetTopic(); got != topicName("delivery.racer") {
		t.Fatalf("subscription on %s, want %s", got, topicName("delivery.racer"))
	}
}

func TestDeliveryTopicID(t *testing.T) {
	t.Parallel()
	long := []byte(strings.Repeat("a", 200))
	tests := []struct {
		base, instance, want, err string
	}{
		{"routing-delivery", "realtime-0", "routing-delivery.realtime-0", ""},
		{"routing-delivery", "Host_1.zone~a+b", "routing-delivery.Host_1.zone~a+b", ""},
		{"routing-delivery", "", "", "invalid instance name"},
		{"routing-delivery", "a/b", "", "invalid instance name"},
		{"routing-delivery", `a"b`, "", "invalid instance name"},
		{"routing-delivery", "100%", "", "invalid instance name"},
		{"routing-delivery-with-a-long-base-name-" + string(long[:20]), string(long), "", "at most 255 characters"},
		{"d", string(long), "d." + string(long), ""},
	}
	for _, tc := range tests {
		got, err := gcppubsub.DeliveryTopicID(tc.base, tc.instance)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("DeliveryTopicID(%q, %q) = %q, %v; want an error saying %q", tc.base, tc.instance, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("DeliveryTopicID(%q, %q) = %q, %v; want %q", tc.base, tc.instance, got, err, tc.want)
		}
	}
	// Distinct instances, distinct topics (the prefix is fixed and the
	// instance is kept whole).
	seen := map[string]string{}
	for _, inst := range []string{"a", "a.b", "a-b", "a_b", "ab", "a.b.c", "A", "a~b", "a+b"} {
		id, err := gcppubsub.DeliveryTopicID("routing-delivery", inst)
		if err != nil {
			t.Fatal(err)
		}
		if other, ok := seen[id]; ok {
			t.Errorf("instances %q and %q share topic %s", inst, other, id)
		}
		seen[id] = inst
	}
}
