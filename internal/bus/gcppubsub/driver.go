// Package gcppubsub is the Google Cloud Pub/Sub driver of the portable bus.
//
// Resources. New creates, or verifies and corrects, the ingress topic, its
// durable subscription (ack deadline, retry policy, dead-letter policy) and
// the two dead-letter topics, each with a "hold" subscription ("<dead-letter
// topic>-hold") that keeps dead messages until they are replayed or purged.
//
// Delivery. Each realtime instance has a delivery topic of its own,
// "<DeliveryTopic>.<instance>" (DeliveryTopicID), with one subscription of
// the same id, made by PrepareDelivery or Subscribe with the shared delivery
// dead-letter topic in its policy and expiring after
// DeliverySubscriptionExpiration of inactivity. A delivery event is
// published to its instance's topic: it is stored, billed and processed once,
// whatever the number of instances (a filtered subscription per instance on
// one topic would see, and bill, every event once per instance). Publishing
// never creates a topic: an instance makes its own before it announces
// itself in presence, and an event for an instance whose topic does not
// exist (it has left) is dropped, as Pub/Sub drops a message published to a
// topic without subscriptions; the envelope is in the store and reaches the
// recipient on their next connection or fetch. Close deletes the
// subscriptions and the topic of the instances the Driver made or received
// for: an instance name belongs to one live process. Topics left behind by
// instances that died are removed by the Janitor.
//
// LegacySharedDelivery keeps the earlier layout (one shared topic, a
// subscription per instance filtered on the instance attribute) working
// beside it while a deployment moves over, without losing an event: an
// instance also creates and reads its filtered subscription, and an event
// for an instance without a topic of its own goes to the shared topic when
// that instance's filtered subscription exists (a process of the earlier
// layout).
//
// Identity and duplicates. Pub/Sub assigns its own message ids and has no
// publish-side deduplication (Capabilities().DedupWindow is 0): the message
// id travels as an attribute, and a message published twice (a retried
// publish) is delivered twice. The consumers are idempotent on the id.
//
// Ordering. Messages that carry an ordering key are published with it as
// the Pub/Sub ordering key, and the ingress and delivery subscriptions have
// message ordering enabled, so the client hands one key's messages over in
// publish order. Pub/Sub can only enable ordering when a subscription is
// created: New and Subscribe refuse an existing subscription without it,
// saying that it must be recreated. When a publish with an ordering key
// fails, the client pauses the key; the Driver resumes it at once and
// returns the error, so that later publishes of the key are not refused.
// Dead copies keep the ordering key.
//
// Failures. Nack ignores its delay (Capabilities().NackDelay is false): the
// subscriptions' retry policy, made from MinBackoff and MaxBackoff, spaces
// redeliveries. Pub/Sub's own dead-letter policy remains as the backstop
// for messages whose handler never returns (a crashed process); those
// arrive in the dead-letter topic without a reason.
package gcppubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"google.golang.org/api/option"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// AttrMessageID is the attribute that carries the message id on Pub/Sub.
// Received messages have it taken off their attributes.
const AttrMessageID = "routing_message_id"

const attrInstance = driver.AttrInstance

// closeTimeout bounds the deletion of delivery subscriptions and topics on
// Close.
const closeTimeout = 30 * time.Second

// Driver is a driver.Driver on Google Cloud Pub/Sub. It is safe for
// concurrent use.
type Driver struct {
	cfg    Config
	log    *slog.Logger
	client *pubsub.Client

	ingress                    *pubsub.Publisher
	shared                     *pubsub.Publisher // the earlier layout's delivery topic; nil without LegacySharedDelivery
	ingressDead, deliveryDead  *pubsub.Publisher
	topics                     *publishers // one per instance's delivery topic
	legacy                     legacyTargets
	deadOps                    sync.Mutex // serialises dead-letter operations
	mu                         sync.RWMutex
	closed                     bool
	ownedDelivery              map[string]ownedDelivery // by instance: made or received on by this Driver, deleted on Close
	activeDeliverySubscription map[string]int           // names being received on, for the setup check
}

// ownedDelivery names the resources of one instance's delivery that this
// Driver made, which it deletes on Close.
type ownedDelivery struct {
	topic, subscription string // full names
	legacySubscription  string // full name; "" without LegacySharedDelivery
}

var _ driver.Driver = (*Driver)(nil)

// New connects to Pub/Sub and creates or verifies the topics and shared
// subscriptions of cfg (see the package doc). Existing subscriptions with
// settings Pub/Sub can change are updated; those with settings it cannot
// change (topic, filter) make New fail with an error that names them.
//
// opts reach the Pub/Sub client: credentials, or an endpoint. The
// PUBSUB_EMULATOR_HOST environment variable is honoured by the client.
func New(ctx context.Context, cfg Config, opts ...option.ClientOption) (*Driver, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	client, err := pubsub.NewClient(ctx, cfg.ProjectID, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcppubsub: connect to project %s: %w", cfg.ProjectID, err)
	}
	b := &Driver{
		cfg:                        cfg,
		log:                        cfg.Logger.With("bus", "gcppubsub"),
		client:                     client,
		ownedDelivery:              map[string]ownedDelivery{},
		activeDeliverySubscription: map[string]int{},
	}
	if err := b.setup(ctx); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("gcppubsub: set up resources: %w", err)
	}
	b.ingress = b.newPublisher(cfg.IngressTopic)
	b.ingress.PublishSettings.Timeout = cfg.IngressPublishTimeout
	b.topics = newPublishers(func(instance string) *pubsub.Publisher {
		id, _ := DeliveryTopicID(cfg.DeliveryTopic, instance) // checked before
		return b.newPublisher(id)
	})
	if cfg.LegacySharedDelivery {
		b.shared = b.newPublisher(cfg.DeliveryTopic)
	}
	b.ingressDead = b.newPublisher(cfg.IngressDeadLetterTopic)
	b.deliveryDead = b.newPublisher(cfg.DeliveryDeadLetterTopic)
	return b, nil
}

// Capabilities: no publish-side deduplication, no nack delay (the retry
// policy spaces redeliveries), and a setup check of the engine's own
// dead-lettering.
func (b *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{SetupCheck: true}
}

// newPublisher returns a publisher of topic with message ordering enabled.
func (b *Driver) newPublisher(topic string) *pubsub.Publisher {
	p := b.client.Publisher(topic)
	p.PublishSettings.DelayThreshold = b.cfg.PublishDelay
	p.EnableMessageOrdering = true
	return p
}

func (b *Driver) isClosed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.closed
}

// Publish publishes ms and returns once Pub/Sub accepted every one. A
// delivery event goes to its instance's own topic (see the package doc).
func (b *Driver) Publish(ctx context.Context, queue string, ms []*driver.Message) error {
	switch queue {
	case driver.QueueIngress:
		pms := make([]*pubsub.Message, len(ms))
		for i, m := range ms {
			pms[i] = toPubSub(m)
		}
		// The client keeps trying a publish whose caller gave up, until its
		// own timeout: wait for its outcome rather than answer "not
		// published" for a message that may be sent afterwards.
		if err := errors.Join(b.publishAll(ctx, context.WithoutCancel(ctx), b.ingress, pms)...); err != nil {
			return fmt.Errorf("gcppubsub: publish to %s: %w", queue, err)
		}
		return nil
	case driver.QueueDelivery:
		if err := b.publishDeliveries(ctx, ms); err != nil {
			return fmt.Errorf("gcppubsub: publish to %s: %w", queue, err)
		}
		return nil
	default:
		return fmt.Errorf("gcppubsub: publish: unknown queue %q", queue)
	}
}

// toPubSub is the Pub/Sub message for m: its attributes plus the id.
func toPubSub(m *driver.Message) *pubsub.Message {
	attrs := make(map[string]string, len(m.Attributes)+1)
	maps.Copy(attrs, m.Attributes)
	attrs[AttrMessageID] = m.ID
	return &pubsub.Message{Data: m.Data, Attributes: attrs, OrderingKey: m.OrderingKey}
}

// publishAll publishes pms in order and waits for every result (with
// wait, which may outlive ctx); it returns one error per message, nil for
// those published.
//
// When a publish with an ordering key fails, the Pub/Sub client pauses the
// key: every later publish with it fails at once until ResumePublish. The
// failed publish's error is returned; the key is resumed so that later
// publishes are not stuck. A publish refused because the key was paused by
// an earlier failure (whose caller gave up waiting before the failure came
// back) was never sent: it is resumed and sent once more.
func (b *Driver) publishAll(ctx, wait context.Context, p *pubsub.Publisher, pms []*pubsub.Message) []error {
	errs := make([]error, len(pms))
	results := make([]*pubsub.PublishResult, len(pms))
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		for i := range errs {
			errs[i] = driver.ErrClosed
		}
		return errs
	}
	for i, pm := range pms {
		results[i] = p.Publish(ctx, pm)
	}
	b.mu.RUnlock()
	for i, r := range results {
		_, err := r.Get(wait)
		if err == nil {
			continue
		}
		key := pms[i].OrderingKey
		if key != "" && errors.As(err, &pubsub.ErrPublishingPaused{}) {
			p.ResumePublish(key)
			if err = b.publishOne(ctx, wait, p, pms[i]); err == nil {
				continue
			}
		}
		if key != "" {
			p.ResumePublish(key)
		}
		errs[i] = err
	}
	return errs
}

// publishOne publishes pm and waits for the result; the read lock keeps
// Close from stopping the publisher between the closed check and the call.
func (b *Driver) publishOne(ctx, wait context.Context, p *pubsub.Publisher, pm *pubsub.Message) error {
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return driver.ErrClosed
	}
	res := p.Publish(ctx, pm)
	b.mu.RUnlock()
	_, err := res.Get(wait)
	return err
}

// PrepareDelivery creates (or verifies) instance's delivery topic and
// subscription (and, under LegacySharedDelivery, its filtered subscription
// on the shared topic), which this Driver then owns: Close deletes them.
func (b *Driver) PrepareDelivery(ctx context.Context, instance string) error {
	_, err := b.ownDelivery(ctx, instance)
	return err
}

// OnEngineDeadLetter: Pub/Sub's own dead-letter policy moves messages
// silently, so fn is never called.
func (b *Driver) OnEngineDeadLetter(func(queue string)) {}

// IngressBacklog is not known cheaply on Pub/Sub (it is a Cloud
// Monitoring metric): unsupported.
func (b *Driver) IngressBacklog(context.Context) (int64, error) {
	return 0, fmt.Errorf("gcppubsub: ingress backlog: %w", errors.ErrUnsupported)
}

// CheckSetup is CheckDeadLetterSetup.
func (b *Driver) CheckSetup(ctx context.Context) error { return b.CheckDeadLetterSetup(ctx) }

// Ping reports whether Pub/Sub answers, by reading the ingress topic.
func (b *Driver) Ping(ctx context.Context) error {
	if b.isClosed() {
		return driver.ErrClosed
	}
	if err := b.ensureTopicExists(ctx, b.topicName(b.cfg.IngressTopic)); err != nil {
		return fmt.Errorf("gcppubsub: ping: %w", err)
	}
	return nil
}

// Close deletes the delivery subscriptions and topics this Driver made,
// flushes the publishers and closes the client. Subscriptions must be
// closed first. It is safe to call more than once.
//
// An instance's resources go in this order: its filtered subscription on
// the shared topic, its subscription, its topic. A publisher that finds the
// topic gone drops the event (and, under LegacySharedDelivery, finds no
// filtered subscription to send it to instead).
func (b *Driver) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	owned := maps.Clone(b.ownedDelivery)
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	for instance, o := range owned {
		err := b.deleteDelivery(ctx, o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b.log.Info("deleted delivery topic and subscription", "instance", instance, "topic", o.topic)
	}
	b.topics.stopAll()
	for _, p := range []*pubsub.Publisher{b.ingress, b.shared, b.ingressDead, b.deliveryDead} {
		if p != nil {
			p.Stop()
		}
	}
	if err := b.client.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close client: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gcppubsub: close: %w", err)
	}
	return nil
}
