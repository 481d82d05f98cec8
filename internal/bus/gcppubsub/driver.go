// Package gcppubsub is the Google Cloud Pub/Sub driver of the portable bus.
//
// Resources. New creates, or verifies and corrects, the ingress topic, its
// durable subscription (ack deadline, retry policy, dead-letter policy), the
// delivery topic and the two dead-letter topics, each with a "hold"
// subscription ("<dead-letter topic>-hold") that keeps dead messages until
// they are replayed or purged. Each realtime instance has its own
// subscription on the delivery topic ("<prefix><instance>", made by
// PrepareDelivery or Subscribe), filtered on the instance attribute so that
// an instance never receives events addressed to another, expiring after
// DeliverySubscriptionExpiration of inactivity. Pub/Sub only delivers a
// message to subscriptions that exist when it is published, so the first
// publish of a Driver to an instance also makes sure that the instance's
// subscription exists. Close deletes the delivery subscriptions the Driver
// made or received on: an instance name belongs to one live process.
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
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// AttrMessageID is the attribute that carries the message id on Pub/Sub.
// Received messages have it taken off their attributes.
const AttrMessageID = "routing_message_id"

const attrInstance = driver.AttrInstance

// closeTimeout bounds the deletion of delivery subscriptions on Close.
const closeTimeout = 30 * time.Second

// Driver is a driver.Driver on Google Cloud Pub/Sub. It is safe for
// concurrent use.
type Driver struct {
	cfg    Config
	log    *slog.Logger
	client *pubsub.Client

	ingress, delivery          *pubsub.Publisher
	ingressDead, deliveryDead  *pubsub.Publisher
	deadOps                    sync.Mutex // serialises dead-letter operations
	mu                         sync.RWMutex
	closed                     bool
	ownedDeliverySubscription  map[string]bool // names made or received on by this Driver, deleted on Close
	activeDeliverySubscription map[string]int  // names being received on, for the setup check
	deliveryTargets            sync.Map        // instance -> struct{}: its subscription is known to exist
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
		ownedDeliverySubscription:  map[string]bool{},
		activeDeliverySubscription: map[string]int{},
	}
	if err := b.setup(ctx); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("gcppubsub: set up resources: %w", err)
	}
	b.ingress = b.newPublisher(cfg.IngressTopic)
	b.ingress.PublishSettings.Timeout = cfg.IngressPublishTimeout
	b.delivery = b.newPublisher(cfg.DeliveryTopic)
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
// delivery event also makes sure that its instance's subscription exists.
func (b *Driver) Publish(ctx context.Context, queue string, ms []*driver.Message) error {
	var p *pubsub.Publisher
	wait := ctx
	switch queue {
	case driver.QueueIngress:
		p = b.ingress
		// The client keeps trying a publish whose caller gave up, until its
		// own timeout: wait for its outcome rather than answer "not
		// published" for a message that may be sent afterwards.
		wait = context.WithoutCancel(ctx)
	case driver.QueueDelivery:
		p = b.delivery
		for _, m := range ms {
			if !instanceName.MatchString(m.Instance) {
				return fmt.Errorf("gcppubsub: publish %s: invalid instance name %q", m.ID, m.Instance)
			}
			if err := b.ensureDeliveryTarget(ctx, m.Instance); err != nil {
				return fmt.Errorf("gcppubsub: publish %s to %s: %w", m.ID, m.Instance, err)
			}
		}
	default:
		return fmt.Errorf("gcppubsub: publish: unknown queue %q", queue)
	}
	pms := make([]*pubsub.Message, len(ms))
	for i, m := range ms {
		pms[i] = toPubSub(m)
	}
	if err := b.publishAll(ctx, wait, p, pms); err != nil {
		return fmt.Errorf("gcppubsub: publish to %s: %w", queue, err)
	}
	return nil
}

// toPubSub is the Pub/Sub message for m: its attributes plus the id.
func toPubSub(m *driver.Message) *pubsub.Message {
	attrs := make(map[string]string, len(m.Attributes)+1)
	maps.Copy(attrs, m.Attributes)
	attrs[AttrMessageID] = m.ID
	return &pubsub.Message{Data: m.Body, Attributes: attrs, OrderingKey: m.OrderingKey}
}

// publishAll publishes pms in order and waits for every result (with
// wait, which may outlive ctx).
//
// When a publish with an ordering key fails, the Pub/Sub client pauses the
// key: every later publish with it fails at once until ResumePublish. The
// failed publish's error is returned; the key is resumed so that later
// publishes are not stuck. A publish refused because the key was paused by
// an earlier failure (whose caller gave up waiting before the failure came
// back) was never sent: it is resumed and sent once more.
func (b *Driver) publishAll(ctx, wait context.Context, p *pubsub.Publisher, pms []*pubsub.Message) error {
	results := make([]*pubsub.PublishResult, len(pms))
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return driver.ErrClosed
	}
	for i, pm := range pms {
		results[i] = p.Publish(ctx, pm)
	}
	b.mu.RUnlock()
	var errs []error
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
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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

// ensureDeliveryTarget makes sure that instance's subscription exists
// before the first event addressed to it is published: Pub/Sub delivers a
// message only to the subscriptions that exist when it is published, and
// the instance may be creating its subscription right now. It creates the
// subscription when it is missing (with the instance's expiration, so one
// made for an instance that never comes is removed by Pub/Sub); it asks
// Pub/Sub once per instance and Driver.
func (b *Driver) ensureDeliveryTarget(ctx context.Context, instance string) error {
	if _, ok := b.deliveryTargets.Load(instance); ok {
		return nil
	}
	if b.isClosed() {
		return driver.ErrClosed
	}
	spec := b.deliverySubscriptionSpec(instance)
	_, err := b.client.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: spec.Name})
	if status.Code(err) == codes.NotFound {
		_, err = b.client.SubscriptionAdminClient.CreateSubscription(ctx, spec)
		if status.Code(err) == codes.AlreadyExists {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("ensure subscription %s: %w", spec.Name, err)
	}
	b.deliveryTargets.Store(instance, struct{}{})
	return nil
}

// PrepareDelivery creates (or verifies) instance's delivery subscription,
// which this Driver then owns (it is deleted on Close).
func (b *Driver) PrepareDelivery(ctx context.Context, instance string) error {
	_, err := b.ownDeliverySubscription(ctx, instance)
	return err
}

// ownDeliverySubscription creates or verifies instance's subscription and
// records it as this Driver's; it returns the subscription's id.
func (b *Driver) ownDeliverySubscription(ctx context.Context, instance string) (string, error) {
	if !instanceName.MatchString(instance) {
		return "", fmt.Errorf("gcppubsub: invalid instance name %q (1-200 of [A-Za-z0-9._~+-])", instance)
	}
	subID := b.cfg.DeliverySubscriptionPrefix + instance
	if !validResourceID(subID) {
		return "", fmt.Errorf("gcppubsub: subscription id %q is not a valid Pub/Sub id", subID)
	}
	if b.isClosed() {
		return "", driver.ErrClosed
	}
	spec := b.deliverySubscriptionSpec(instance)
	if _, err := b.ensureSubscription(ctx, spec); err != nil {
		return "", fmt.Errorf("gcppubsub: delivery subscription of %s: %w", instance, err)
	}
	b.deliveryTargets.Store(instance, struct{}{})
	b.mu.Lock()
	b.ownedDeliverySubscription[spec.Name] = true
	b.mu.Unlock()
	return subID, nil
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

// Close deletes the delivery subscriptions this Driver made, flushes the
// publishers and closes the client. Subscriptions must be closed first. It
// is safe to call more than once.
func (b *Driver) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	owned := maps.Clone(b.ownedDeliverySubscription)
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	for name := range owned {
		if err := b.deleteSubscription(ctx, name); err != nil {
			errs = append(errs, err)
		} else {
			b.log.Info("deleted delivery subscription", "subscription", name)
		}
	}
	for _, p := range []*pubsub.Publisher{b.ingress, b.delivery, b.ingressDead, b.deliveryDead} {
		p.Stop()
	}
	if err := b.client.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close client: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gcppubsub: close: %w", err)
	}
	return nil
}
