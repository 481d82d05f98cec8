package gcppubsub_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
)

// billedDeliveries is what Pub/Sub bills for delivering the messages the
// fake holds: each message once per subscription attached to its topic
// (filtered or not: Pub/Sub's documentation on filtering says message
// delivery fees apply to the messages a filter drops too). It counts the
// subscriptions attached now, which the callers do not change between
// publishing and counting.
func billedDeliveries(t *testing.T, f *fake, admin *pubsub.Client) int {
	t.Helper()
	subs := map[string]int{}
	n := 0
	for _, m := range f.srv.Messages() {
		k, ok := subs[m.Topic]
		if !ok {
			k = len(topicSubscriptions(t, admin, m.Topic[len(topicName("")):]))
			subs[m.Topic] = k
		}
		n += k
	}
	return n
}

// delivered records the events each instance handled.
type delivered struct {
	mu   sync.Mutex
	byID map[string][]string // event id -> instances that handled it
	per  map[string]int      // instance -> events handled
}

func (d *delivered) add(instance, id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.byID[id] = append(d.byID[id], instance)
	d.per[instance]++
}

func (d *delivered) total() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, c := range d.per {
		n += c
	}
	return n
}

// Twenty realtime instances on the fake, each with its own Driver (one
// per process): every event reaches exactly one subscription, its
// instance's, so the messages pulled and billed add up to the events
// published, not twenty times that. An instance killed without cleaning up
// leaves its topic; once it has been absent from presence for the TTL and
// its subscription has expired, the janitor deletes the topic; its
// recipients' messages, stored before routing, reach them as backlog when
// they reconnect to another instance, and live messages follow them there.
func TestTwentyInstancesEachPullOnlyTheirOwn(t *testing.T) {
	t.Parallel()
	const instances, usersPer, perUser = 20, 2, 10
	f := newFake(t)
	cfg := testConfig(t)
	cfg.Streams = 2
	admin := f.adminClient(t)
	pipeline := f.newBus(t, cfg)
	st, err := sqlite.Open(ctxT(t), filepath.Join(t.TempDir(), "routing.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })

	got := &delivered{byID: map[string][]string{}, per: map[string]int{}}
	insts := make([]string, instances)
	where := map[string]string{} // presence: user -> instance
	stops := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	for i := range insts {
		inst := fmt.Sprintf("rt-%02d", i)
		insts[i] = inst
		for u := range usersPer {
			where[fmt.Sprintf("urn:sm:user:u%02d-%d", i, u)] = inst
		}
		b := f.newBus(t, cfg) // this instance's process
		if err := b.PrepareDelivery(ctxT(t), inst); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		stops[inst] = cancel
		t.Cleanup(cancel)
		wg.Go(func() {
			err := b.ReceiveDelivery(ctx, inst, func(_ context.Context, m *bus.Message) error {
				if m.Attributes[bus.AttrInstance] != inst {
					t.Errorf("%s received %s addressed to %s", inst, m.ID, m.Attributes[bus.AttrInstance])
				}
				got.add(inst, m.ID)
				return nil
			})
			if err != nil && !errors.Is(err, bus.ErrClosed) {
				t.Errorf("ReceiveDelivery(%s): %v", inst, err)
			}
		})
	}

	// route is the pipeline's work on a batch: store first, then one
	// delivery event per recipient's instance.
	seq := 0
	route := func(recipients []string) []*envelope.Envelope {
		t.Helper()
		var envs []*envelope.Envelope
		var ds []bus.Delivery
		for _, r := range recipients {
			seq++
			e := &envelope.Envelope{ID: fmt.Sprintf("m%04d", seq), Sender: "urn:sm:user:sender", Recipient: r,
				Payload: []byte("opaque"), CreatedAt: time.Now()}
			envs = append(envs, e)
			ds = append(ds, bus.Delivery{Instance: where[r], Message: &bus.Message{ID: e.ID, Data: e.Payload, OrderingKey: r}})
		}
		if _, err := st.PutMessages(ctxT(t), envs); err != nil {
			t.Fatal(err)
		}
		if err := pipeline.PublishDeliveries(ctxT(t), ds); err != nil {
			t.Fatal(err)
		}
		return envs
	}
	users := make([]string, 0, len(where))
	for u := range where {
		users = append(users, u)
	}
	slices.Sort(users)
	for range perUser {
		route(users)
	}
	const events = instances * usersPer * perUser
	waitUntil(t, "every event", func() bool { return got.total() >= events })

	got.mu.Lock()
	for id, at := range got.byID {
		if len(at) != 1 {
			t.Errorf("event %s handled by %v, want exactly one instance", id, at)
		}
	}
	if len(got.byID) != events {
		t.Errorf("%d distinct events handled, want %d", len(got.byID), events)
	}
	for _, inst := range insts {
		if got.per[inst] != usersPer*perUser {
			t.Errorf("%s handled %d events, want %d", inst, got.per[inst], usersPer*perUser)
		}
	}
	got.mu.Unlock()
	pulled := 0
	for _, m := range f.srv.Messages() {
		pulled += m.Deliveries
	}
	if pulled != events {
		t.Errorf("the fake delivered %d messages in all, want %d (one per event)", pulled, events)
	}
	if billed := billedDeliveries(t, f, admin); billed != events {
		t.Errorf("%d deliveries billed for %d events, want one each", billed, events)
	}

	// rt-07 is killed: it stops reading and cleans nothing up. Until
	// presence expires its users' entries, events for them still go to its
	// topic, where nobody reads them; they are in the store.
	const killed = "rt-07"
	stops[killed]()
	orphans := []string{"urn:sm:user:u07-0", "urn:sm:user:u07-1"}
	late := route(orphans)
	before := got.total()

	// Presence forgets rt-07; its subscription expires unread (the fake
	// keeps the expiration policy without applying it: deleted here as
	// Pub/Sub would); the janitor, after the TTL, deletes its topic.
	presence := newFakePresence(insts...)
	presence.set(killed, false)
	deleteSub(t, f, "delivery."+killed)
	c := &clock{now: time.Unix(1_700_000_000, 0)}
	const ttl = time.Hour
	j := f.newJanitor(t, cfg, presence, c, ttl)
	if r := sweep(t, j); len(r.Removed) != 0 || r.Present != instances-1 || r.Waiting != 1 {
		t.Fatalf("first sweep %+v", r)
	}
	c.add(ttl)
	if r := sweep(t, j); !slices.Equal(r.Removed, []string{"delivery." + killed}) {
		t.Fatalf("sweep after the TTL removed %v, want only delivery.%s", r.Removed, killed)
	}
	if topicExists(t, admin, "delivery."+killed) {
		t.Fatalf("delivery.%s still exists", killed)
	}
	for _, inst := range insts {
		if inst != killed && (!topicExists(t, admin, "delivery."+inst) || !subExists(t, admin, "delivery."+inst)) {
			t.Errorf("the janitor touched %s's topic or subscription", inst)
		}
	}

	// rt-07's users reconnect to rt-03: their backlog is read from the
	// store (the late messages included), and live messages reach them
	// through rt-03's topic.
	for _, u := range orphans {
		where[u] = "rt-03"
	}
	for _, e := range late {
		page, err := st.Pending(ctxT(t), e.Recipient, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range page.Envelopes {
			found = found || p.ID == e.ID
		}
		if !found {
			t.Errorf("%s sent to %s while its instance was dead is not in their backlog", e.ID, e.Recipient)
		}
	}
	live := route(orphans)
	waitUntil(t, "the live messages at rt-03", func() bool { return got.total() == before+len(live) })
	got.mu.Lock()
	for _, e := range live {
		if at := got.byID[e.ID]; !slices.Equal(at, []string{"rt-03"}) {
			t.Errorf("live %s to a reconnected user handled by %v, want rt-03", e.ID, at)
		}
	}
	for _, e := range late {
		if at := got.byID[e.ID]; len(at) != 0 {
			t.Errorf("%s, sent to the dead instance, handled by %v", e.ID, at)
		}
	}
	got.mu.Unlock()
}

// The same twenty instances on the earlier layout (one shared topic, a
// filtered subscription each) are billed twenty deliveries per event: the
// count above tells the layouts apart.
func TestSharedTopicBillsEveryInstance(t *testing.T) {
	t.Parallel()
	const instances, events = 20, 10
	f := newFake(t)
	cfg := legacyConfig(t)
	admin := f.adminClient(t)
	f.newBus(t, cfg) // makes the shared topic
	for i := range instances {
		oldInstance(t, admin, cfg, fmt.Sprintf("old-%02d", i))
	}
	for i := range events {
		oldPublish(t, admin, cfg, fmt.Sprintf("old-%02d", i%instances), fmt.Sprintf("e%d", i))
	}
	if billed := billedDeliveries(t, f, admin); billed != instances*events {
		t.Errorf("%d deliveries billed on the shared topic, want %d (every event once per filtered subscription)", billed, instances*events)
	}
}
