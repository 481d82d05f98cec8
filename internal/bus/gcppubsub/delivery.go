package gcppubsub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// publisherIdle is how long a delivery topic's publisher may go unused
// before it is stopped (the instance is likely gone; a later event makes a
// new one).
const publisherIdle = 5 * time.Minute

// legacyRecheck is how long the answer to "does this instance, without a
// topic of its own, have a filtered subscription on the shared topic?" is
// kept.
const legacyRecheck = 30 * time.Second

// publishDeliveries publishes each event to its instance's topic, keeping
// the order of each instance's events, and waits for every result. The
// events of an instance whose topic does not exist are dropped (it has
// left), or, under LegacySharedDelivery, go to the shared topic when the
// instance reads the earlier layout's filtered subscription.
func (b *Driver) publishDeliveries(ctx context.Context, ms []*driver.Message) error {
	type group struct {
		instance string
		pub      *topicPublisher
		msgs     []*pubsub.Message
		ids      []string
	}
	var groups []*group
	byInstance := map[string]*group{}
	for _, m := range ms {
		g := byInstance[m.Instance]
		if g == nil {
			if _, err := DeliveryTopicID(b.cfg.DeliveryTopic, m.Instance); err != nil {
				return fmt.Errorf("publish %s: %w", m.ID, err)
			}
			g = &group{instance: m.Instance}
			byInstance[m.Instance] = g
			groups = append(groups, g)
		}
		g.msgs = append(g.msgs, toPubSub(m))
		g.ids = append(g.ids, m.ID)
	}
	if b.isClosed() {
		return driver.ErrClosed
	}

	// Publish every instance's events at once, then wait for them. An
	// instance known to have no topic of its own but a filtered
	// subscription (a process of the earlier layout) is sent to through
	// the shared topic straight away.
	var wg sync.WaitGroup
	results := make([][]error, len(groups))
	legacy := make([]bool, len(groups))
	for i, g := range groups {
		if b.shared != nil && b.legacy.known(g.instance) {
			legacy[i] = true
			wg.Go(func() { results[i] = b.publishAll(ctx, ctx, b.shared, g.msgs) })
			continue
		}
		g.pub = b.topics.acquire(g.instance)
		wg.Go(func() {
			defer b.topics.release(g.pub)
			results[i] = b.publishAll(ctx, ctx, g.pub.p, g.msgs)
		})
	}
	wg.Wait()

	var errs []error
	for i, g := range groups {
		if legacy[i] {
			if err := errors.Join(results[i]...); err != nil {
				errs = append(errs, fmt.Errorf("to %s through the shared topic %s: %w", g.instance, b.cfg.DeliveryTopic, err))
			}
			continue
		}
		var failed []*pubsub.Message
		var firstErr error
		missing := false
		for j, err := range results[i] {
			if err == nil {
				continue
			}
			failed = append(failed, g.msgs[j])
			if firstErr == nil {
				firstErr = err
			}
			if status.Code(err) == codes.NotFound {
				missing = true
			}
		}
		if len(failed) == 0 {
			continue
		}
		if !missing {
			errs = append(errs, fmt.Errorf("to %s: %w", g.instance, firstErr))
			continue
		}
		// The topic is gone: so is the instance. Its publisher is of no
		// further use.
		b.topics.retire(g.instance, g.pub)
		if err := b.publishMissing(ctx, g.instance, failed); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// publishMissing handles the events of an instance that has no topic of its
// own: under LegacySharedDelivery, an instance that reads the earlier
// layout's filtered subscription gets them through the shared topic; the
// others are dropped (the envelopes are in the store).
func (b *Driver) publishMissing(ctx context.Context, instance string, pms []*pubsub.Message) error {
	if b.shared != nil {
		legacy, err := b.legacy.has(ctx, b, instance)
		if err != nil {
			return fmt.Errorf("to %s: %w", instance, err)
		}
		if legacy {
			if err := errors.Join(b.publishAll(ctx, ctx, b.shared, pms)...); err != nil {
				return fmt.Errorf("to %s through the shared topic %s: %w", instance, b.cfg.DeliveryTopic, err)
			}
			return nil
		}
	}
	b.log.Debug("delivery events dropped: the instance has no delivery topic (it has left)", "instance", instance, "events", len(pms))
	return nil
}

// legacyTargets remembers, for a short while, which instances without a
// topic of their own read the earlier layout's filtered subscription.
type legacyTargets struct {
	mu      sync.Mutex
	checked map[string]legacyAnswer
}

type legacyAnswer struct {
	exists bool
	at     time.Time
}

// known reports whether instance was lately found to have no topic of its
// own and a filtered subscription on the shared topic.
func (l *legacyTargets) known(instance string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.checked[instance]
	return ok && a.exists && time.Since(a.at) < legacyRecheck
}

// has reports whether instance's filtered subscription exists on the shared
// delivery topic.
func (l *legacyTargets) has(ctx context.Context, b *Driver, instance string) (bool, error) {
	l.mu.Lock()
	a, ok := l.checked[instance]
	l.mu.Unlock()
	if ok && time.Since(a.at) < legacyRecheck {
		return a.exists, nil
	}
	name := b.subscriptionName(b.cfg.DeliverySubscriptionPrefix + instance)
	sub, err := b.client.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: name})
	switch {
	case status.Code(err) == codes.NotFound:
		a = legacyAnswer{exists: false, at: time.Now()}
	case err != nil:
		return false, fmt.Errorf("get subscription %s: %w", name, err)
	default:
		a = legacyAnswer{exists: sub.GetTopic() == b.topicName(b.cfg.DeliveryTopic), at: time.Now()}
	}
	l.mu.Lock()
	if l.checked == nil {
		l.checked = map[string]legacyAnswer{}
	}
	l.checked[instance] = a
	l.mu.Unlock()
	return a.exists, nil
}

// publishers holds one publisher per instance's delivery topic, made on
// first use. A publisher is stopped once no caller holds it and it has been
// retired (its topic is gone) or left unused for publisherIdle.
type publishers struct {
	make func(instance string) *pubsub.Publisher

	mu        sync.Mutex
	byName    map[string]*topicPublisher
	lastPrune time.Time
	stopped   bool
}

type topicPublisher struct {
	p        *pubsub.Publisher
	users    int // callers holding it; guarded by publishers.mu
	lastUsed time.Time
	retired  bool
}

func newPublishers(make func(instance string) *pubsub.Publisher) *publishers {
	return &publishers{make: make, byName: map[string]*topicPublisher{}, lastPrune: time.Now()}
}

// acquire returns instance's publisher, held until release. Once a
// minute it also stops the publishers left unused for publisherIdle (they
// have nothing to flush: their results were all waited for).
func (ps *publishers) acquire(instance string) *topicPublisher {
	var idle []*topicPublisher
	defer func() {
		for _, tp := range idle {
			tp.p.Stop()
		}
	}()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	now := time.Now()
	if now.Sub(ps.lastPrune) > time.Minute {
		ps.lastPrune = now
		for name, tp := range ps.byName {
			if tp.users == 0 && now.Sub(tp.lastUsed) > publisherIdle {
				delete(ps.byName, name)
				idle = append(idle, tp)
			}
		}
	}
	tp := ps.byName[instance]
	switch {
	case ps.stopped:
		// Closed meanwhile: a publisher of one use (the caller finds the
		// Driver closed before publishing), stopped on release.
		tp = &topicPublisher{p: ps.make(instance), retired: true}
	case tp == nil:
		tp = &topicPublisher{p: ps.make(instance)}
		ps.byName[instance] = tp
	}
	tp.users++
	tp.lastUsed = now
	return tp
}

// release gives tp back; the last holder of a retired publisher stops it.
func (ps *publishers) release(tp *topicPublisher) {
	ps.mu.Lock()
	tp.users--
	stop := tp.users == 0 && tp.retired
	ps.mu.Unlock()
	if stop {
		tp.p.Stop()
	}
}

// retire takes instance's publisher out of use (its topic is gone).
func (ps *publishers) retire(instance string, tp *topicPublisher) {
	ps.mu.Lock()
	if ps.byName[instance] == tp {
		delete(ps.byName, instance)
	}
	already := tp.retired
	tp.retired = true
	stop := !already && tp.users == 0
	ps.mu.Unlock()
	if stop {
		tp.p.Stop()
	}
}

// stopAll stops every publisher (Close, after which nothing publishes).
func (ps *publishers) stopAll() {
	ps.mu.Lock()
	all := ps.byName
	ps.byName = map[string]*topicPublisher{}
	ps.stopped = true
	ps.mu.Unlock()
	for _, tp := range all {
		tp.p.Stop()
	}
}

// absentLabel is the topic label by which the Janitor records since when
// (Unix seconds) an instance's delivery topic has had no instance present.
const absentLabel = "routing_absent_since"

// ownDelivery creates or verifies instance's delivery topic and
// subscription (and its filtered subscription on the shared topic under
// LegacySharedDelivery) and records them as this Driver's; it returns the
// ids of the subscriptions to receive on.
func (b *Driver) ownDelivery(ctx context.Context, instance string) ([]string, error) {
	id, err := DeliveryTopicID(b.cfg.DeliveryTopic, instance)
	if err != nil {
		return nil, fmt.Errorf("gcppubsub: %w", err)
	}
	if b.cfg.LegacySharedDelivery && !validResourceID(b.cfg.DeliverySubscriptionPrefix+instance) {
		return nil, fmt.Errorf("gcppubsub: subscription id %q is not a valid Pub/Sub id", b.cfg.DeliverySubscriptionPrefix+instance)
	}
	if b.isClosed() {
		return nil, driver.ErrClosed
	}
	o := ownedDelivery{topic: b.topicName(id), subscription: b.subscriptionName(id)}
	if err := b.ensureDeliveryTopic(ctx, o.topic, o.subscription, b.deliverySubscriptionSpec(id)); err != nil {
		return nil, fmt.Errorf("gcppubsub: delivery of %s: %w", instance, err)
	}
	subs := []string{id}
	if b.cfg.LegacySharedDelivery {
		spec := b.legacyDeliverySubscriptionSpec(instance)
		if _, err := b.ensureSubscription(ctx, spec); err != nil {
			return nil, fmt.Errorf("gcppubsub: filtered delivery subscription of %s on the shared topic: %w", instance, err)
		}
		o.legacySubscription = spec.Name
		subs = append(subs, idOf(spec.Name))
	}
	b.mu.Lock()
	b.ownedDelivery[instance] = o
	b.mu.Unlock()
	return subs, nil
}

// ensureDeliveryTopic creates (or verifies) an instance's topic and its
// subscription. It takes off a janitor's absence label, and it heals what a
// janitor racing with the instance's return may leave: a subscription
// detached from its deleted topic is made again, and a topic deleted
// between the two steps is made again.
func (b *Driver) ensureDeliveryTopic(ctx context.Context, topic, sub string, spec *pubsubpb.Subscription) error {
	for attempt := 0; ; attempt++ {
		if err := b.ensureOwnTopic(ctx, topic); err != nil {
			return err
		}
		_, err := b.ensureSubscription(ctx, spec)
		if err != nil && attempt < 2 {
			got, gerr := b.client.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: sub})
			if gerr == nil && (got.GetDetached() || got.GetTopic() != topic) {
				b.log.Warn("delivery subscription detached from its topic; making it again", "subscription", sub, "topic", got.GetTopic())
				if derr := b.deleteSubscription(ctx, sub); derr != nil {
					return derr
				}
				continue
			}
			if status.Code(err) == codes.NotFound {
				continue // the topic went between the two steps
			}
		}
		if err != nil {
			return err
		}
		// The topic must still be there now that the subscription is.
		_, err = b.client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: topic})
		if status.Code(err) == codes.NotFound && attempt < 2 {
			continue
		}
		if err != nil {
			return fmt.Errorf("get topic %s: %w", topic, err)
		}
		return nil
	}
}

// ensureOwnTopic creates an instance's delivery topic, or takes a janitor's
// absence label off the existing one.
func (b *Driver) ensureOwnTopic(ctx context.Context, name string) error {
	t, err := b.client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: name})
	if status.Code(err) == codes.NotFound {
		_, err = b.client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: name})
		if err == nil {
			b.log.Info("created delivery topic", "topic", name)
			return nil
		}
		if status.Code(err) == codes.AlreadyExists {
			return nil
		}
		return fmt.Errorf("create topic %s: %w", name, err)
	}
	if err != nil {
		return fmt.Errorf("get topic %s: %w", name, err)
	}
	if _, ok := t.GetLabels()[absentLabel]; ok {
		return b.setAbsentLabel(ctx, t, "")
	}
	return nil
}

// setAbsentLabel sets the absence label of topic t to value, or takes it
// off for "".
func (b *Driver) setAbsentLabel(ctx context.Context, t *pubsubpb.Topic, value string) error {
	labels := make(map[string]string, len(t.GetLabels())+1)
	for k, v := range t.GetLabels() {
		labels[k] = v
	}
	if value == "" {
		delete(labels, absentLabel)
	} else {
		labels[absentLabel] = value
	}
	_, err := b.client.TopicAdminClient.UpdateTopic(ctx, &pubsubpb.UpdateTopicRequest{
		Topic:      &pubsubpb.Topic{Name: t.GetName(), Labels: labels},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels"}},
	})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("label topic %s: %w", t.GetName(), err)
	}
	return nil
}

// deleteDelivery deletes one instance's delivery resources, in the order
// Close documents.
func (b *Driver) deleteDelivery(ctx context.Context, o ownedDelivery) error {
	if o.legacySubscription != "" {
		if err := b.deleteSubscription(ctx, o.legacySubscription); err != nil {
			return err
		}
	}
	if err := b.deleteSubscription(ctx, o.subscription); err != nil {
		return err
	}
	return b.deleteTopic(ctx, o.topic)
}
