package gcppubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
)

// InstancePresence says which realtime instances are present (announced
// in the presence registry now).
type InstancePresence interface {
	// Present reports, for each of instances, whether it is present.
	Present(ctx context.Context, instances []string) ([]bool, error)
}

// JanitorOptions configure a Janitor. Zero fields take the defaults named
// on each.
type JanitorOptions struct {
	// TopicTTL is how long an instance must have been absent from presence
	// before its delivery topic is deleted. At least 1h; default 48h.
	TopicTTL time.Duration
	// Interval between two sweeps of Run: default TopicTTL/16, between 1m
	// and 1h. The first sweep comes after a random part of it, so that the
	// janitors of several instances spread out.
	Interval time.Duration
	// Presence says which instances are present. Required.
	Presence InstancePresence
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; default the Config's.
	Logger *slog.Logger
}

// Janitor removes the delivery topics that realtime instances left behind
// when they died without a clean shutdown (a clean one deletes its own).
//
// A sweep lists the project's delivery topics ("<DeliveryTopic>.<instance>")
// and asks presence which of their instances are present. The topic of an
// instance that is absent gets a label with the time it was first found
// absent (so that the count survives restarts and is shared by every
// janitor); once that is TopicTTL ago, and the topic has no subscription
// left (the instance's expires after DeliverySubscriptionExpiration without
// a reader), the topic is deleted. A topic is never deleted while its
// instance is present (its label is taken off) or while it has a
// subscription. Deleting is idempotent: several janitors may sweep at once,
// and a topic already gone is no error. An instance that comes back takes
// the label off at start and makes its topic again if it was deleted.
type Janitor struct {
	d   *Driver // the admin calls of a Driver; no publishers
	o   JanitorOptions
	log *slog.Logger
}

// SweepReport is what one sweep found and did.
type SweepReport struct {
	// Topics is how many delivery topics the project holds.
	Topics int
	// Present are kept because their instance is present; Waiting because
	// it has been absent for less than TopicTTL (or was just found absent);
	// InUse because a subscription is still attached.
	Present, Waiting, InUse int
	// Removed are the ids of the topics deleted.
	Removed []string
}

// NewJanitor returns a Janitor of cfg's delivery topics, connected to
// Pub/Sub as New is (same opts). Close releases it.
func NewJanitor(ctx context.Context, cfg Config, o JanitorOptions, opts ...option.ClientOption) (*Janitor, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if o.Presence == nil {
		return nil, errors.New("gcppubsub janitor: Presence is required")
	}
	if o.TopicTTL == 0 {
		o.TopicTTL = 48 * time.Hour
	}
	if o.TopicTTL < time.Hour {
		return nil, fmt.Errorf("gcppubsub janitor: TopicTTL must be at least 1h, got %s", o.TopicTTL)
	}
	if o.Interval <= 0 {
		o.Interval = min(max(o.TopicTTL/16, time.Minute), time.Hour)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = cfg.Logger
	}
	client, err := pubsub.NewClient(ctx, cfg.ProjectID, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcppubsub janitor: connect to project %s: %w", cfg.ProjectID, err)
	}
	log := o.Logger.With("bus", "gcppubsub", "component", "delivery janitor")
	return &Janitor{d: &Driver{cfg: cfg, client: client, log: log}, o: o, log: log}, nil
}

// Run sweeps every Interval until ctx is done. A failed sweep is logged and
// tried again at the next.
func (j *Janitor) Run(ctx context.Context) {
	wait := rand.N(j.o.Interval) + time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = j.o.Interval
		r, err := j.Sweep(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			j.log.Warn("sweep of delivery topics failed; trying again later", "err", err, "retry_in", wait)
		case len(r.Removed) > 0:
			j.log.Info("deleted delivery topics of instances gone", "topics", r.Removed, "kept", r.Topics-len(r.Removed))
		}
	}
}

// Sweep runs one pass over the project's delivery topics (see Janitor).
func (j *Janitor) Sweep(ctx context.Context) (SweepReport, error) {
	var r SweepReport
	type candidate struct {
		topic    *pubsubpb.Topic
		instance string
	}
	var cands []candidate
	it := j.d.client.TopicAdminClient.ListTopics(ctx, &pubsubpb.ListTopicsRequest{Project: "projects/" + j.d.cfg.ProjectID})
	for {
		t, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return r, fmt.Errorf("gcppubsub janitor: list topics: %w", err)
		}
		if inst, ok := instanceOfTopic(j.d.cfg.DeliveryTopic, idOf(t.GetName())); ok {
			cands = append(cands, candidate{t, inst})
		}
	}
	r.Topics = len(cands)
	if len(cands) == 0 {
		return r, nil
	}
	instances := make([]string, len(cands))
	for i, c := range cands {
		instances[i] = c.instance
	}
	present, err := j.o.Presence.Present(ctx, instances)
	if err != nil {
		// Nothing is deleted on a guess.
		return r, fmt.Errorf("gcppubsub janitor: presence: %w", err)
	}
	if len(present) != len(cands) {
		return r, fmt.Errorf("gcppubsub janitor: presence answered for %d instances of %d", len(present), len(cands))
	}
	now := j.o.Now()
	var errs []error
	for i, c := range cands {
		since, labelled := absentSince(c.topic)
		switch {
		case present[i]:
			r.Present++
			if labelled {
				errs = append(errs, j.d.setAbsentLabel(ctx, c.topic, ""))
			}
			continue
		case !labelled:
			r.Waiting++
			errs = append(errs, j.d.setAbsentLabel(ctx, c.topic, strconv.FormatInt(now.Unix(), 10)))
			continue
		case now.Sub(since) < j.o.TopicTTL:
			r.Waiting++
			continue
		}
		inUse, err := j.hasSubscription(ctx, c.topic.GetName())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if inUse {
			r.InUse++
			continue
		}
		if err := j.d.deleteTopic(ctx, c.topic.GetName()); err != nil {
			errs = append(errs, err)
			continue
		}
		j.log.Info("deleted the delivery topic of an instance gone", "topic", c.topic.GetName(), "instance", c.instance,
			"absent_since", since.UTC().Format(time.RFC3339))
		r.Removed = append(r.Removed, idOf(c.topic.GetName()))
	}
	if err := errors.Join(errs...); err != nil {
		return r, fmt.Errorf("gcppubsub janitor: %w", err)
	}
	return r, nil
}

// absentSince reads the absence label of t.
func absentSince(t *pubsubpb.Topic) (time.Time, bool) {
	v, ok := t.GetLabels()[absentLabel]
	if !ok {
		return time.Time{}, false
	}
	sec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, false // relabelled from now
	}
	return time.Unix(sec, 0), true
}

// hasSubscription reports whether a subscription is attached to topic.
func (j *Janitor) hasSubscription(ctx context.Context, topic string) (bool, error) {
	it := j.d.client.TopicAdminClient.ListTopicSubscriptions(ctx, &pubsubpb.ListTopicSubscriptionsRequest{Topic: topic, PageSize: 1})
	_, err := it.Next()
	switch {
	case errors.Is(err, iterator.Done):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("list subscriptions of %s: %w", topic, err)
	}
	return true, nil
}

// Close releases the Janitor's connection.
func (j *Janitor) Close() error {
	return j.d.client.Close()
}
