// Package gcppubsub is the Google Cloud Pub/Sub adapter of the bus port.
//
// Resources. New creates, or verifies and corrects, the ingress topic, its
// durable subscription (ack deadline, retry policy, dead-letter policy), the
// delivery topic and the two dead-letter topics, each with a "hold"
// subscription ("<dead-letter topic>-hold") that keeps dead messages until
// they are replayed or purged. ReceiveDelivery gives each realtime instance
// its own subscription on the delivery topic, filtered on the instance
// attribute so that an instance never receives events addressed to another,
// expiring after DeliverySubscriptionExpiration of inactivity. Pub/Sub only
// delivers a message to subscriptions that exist when it is published, so
// the first PublishDelivery of a Bus to an instance also makes sure that the
// instance's subscription exists (creating it if the instance has not yet).
// Close deletes the delivery subscriptions the Bus received on: an instance
// name belongs to one live process.
//
// Identity and duplicates. Pub/Sub assigns its own message ids and has no
// publish-side deduplication: bus.Message.ID travels as an attribute, and a
// message published twice (a retried publish) is delivered twice. The
// consumers are idempotent on Message.ID: the pipeline stores envelopes
// keyed by id and clients deduplicate deliveries by id.
//
// Ordering. Messages that carry a bus.Message.OrderingKey are published with
// it as the Pub/Sub ordering key, and the ingress and delivery subscriptions
// have message ordering enabled, so the client hands one key's messages to
// the handler one at a time, in publish order. The order holds for messages
// handled successfully on their first attempt: a nacked message is
// redelivered later. Pub/Sub can only enable ordering when a subscription is
// created: New and ReceiveDelivery refuse an existing subscription without
// it, saying that it must be recreated. When a publish with an ordering key
// fails, the client pauses the key; the Bus resumes it at once and returns
// the error, so that later publishes of the key are not refused. Dead copies
// keep the ordering key, and replayed messages are published with it.
//
// Failures. A handler error that wraps bus.ErrPermanent, and a failure on
// the last allowed attempt, are dead-lettered by the Bus itself: it publishes
// a copy carrying bus.AttrDeadReason and bus.AttrDeadAttempts to the
// dead-letter topic and acks the original, so the reason travels with the
// message. Other errors nack the message; Pub/Sub redelivers it with the
// retry policy's backoff. Pub/Sub's own dead-letter policy remains as the
// backstop for messages whose handler never returns (a crashed process);
// those arrive without a reason and are listed with one inferred.
package gcppubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/go-routing-service/routingservice/internal/bus"
)

// AttrMessageID is the attribute that carries bus.Message.ID on Pub/Sub.
// Receivers take it off the attributes they hand to handlers.
const AttrMessageID = "routing_message_id"

const attrInstance = bus.AttrInstance

// maxAttrValue is Pub/Sub's limit on an attribute value, in bytes.
const maxAttrValue = 1024

// deadLetterPublishTimeout bounds the publish of a dead copy, which runs
// even when the receiver is stopping so that the message is not retried.
const deadLetterPublishTimeout = 30 * time.Second

// closeTimeout bounds the deletion of delivery subscriptions on Close.
const closeTimeout = 30 * time.Second

// Bus is a bus.Bus and bus.DeadLetters on Google Cloud Pub/Sub. It is safe
// for concurrent use.
type Bus struct {
	cfg    Config
	log    *slog.Logger
	client *pubsub.Client

	ingress, delivery          *pubsub.Publisher
	ingressDead, deliveryDead  *pubsub.Publisher
	ctx                        context.Context // cancelled by Close: stops receivers
	cancel                     context.CancelFunc
	receivers                  sync.WaitGroup
	deadOps                    sync.Mutex // serialises dead-letter operations
	mu                         sync.RWMutex
	closed                     bool
	ownedDeliverySubscription  map[string]bool // names received on by this Bus, deleted on Close
	activeDeliverySubscription map[string]int  // names being received on, for readiness checks
	deliveryTargets            sync.Map        // instance -> struct{}: its subscription is known to exist
}

var (
	_ bus.Bus         = (*Bus)(nil)
	_ bus.DeadLetters = (*Bus)(nil)
)

// New connects to Pub/Sub and creates or verifies the topics and shared
// subscriptions of cfg (see the package doc). Existing subscriptions with
// settings Pub/Sub can change are updated; those with settings it cannot
// change (topic, filter) make New fail with an error that names them.
//
// opts reach the Pub/Sub client: credentials, or an endpoint. The
// PUBSUB_EMULATOR_HOST environment variable is honoured by the client.
func New(ctx context.Context, cfg Config, opts ...option.ClientOption) (*Bus, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	client, err := pubsub.NewClient(ctx, cfg.ProjectID, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcppubsub: connect to project %s: %w", cfg.ProjectID, err)
	}
	b := &Bus{
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
	b.delivery = b.newPublisher(cfg.DeliveryTopic)
	b.ingressDead = b.newPublisher(cfg.IngressDeadLetterTopic)
	b.deliveryDead = b.newPublisher(cfg.DeliveryDeadLetterTopic)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// newPublisher returns a publisher of topic with message ordering enabled:
// messages that carry an ordering key are sent in the order they were
// published (see publishRaw for what a failure does to the key).
func (b *Bus) newPublisher(topic string) *pubsub.Publisher {
	p := b.client.Publisher(topic)
	p.PublishSettings.DelayThreshold = b.cfg.PublishDelay
	p.EnableMessageOrdering = true
	return p
}

// PublishIngress publishes m to the ingress topic and returns once Pub/Sub
// has accepted it. Publishing the same ID twice delivers it twice (see the
// package doc).
func (b *Bus) PublishIngress(ctx context.Context, m *bus.Message) error {
	if err := b.publish(ctx, b.ingress, m, nil); err != nil {
		return fmt.Errorf("gcppubsub: publish ingress %s: %w", m.ID, err)
	}
	return nil
}

// PublishDelivery publishes m on the delivery topic with the attribute
// bus.AttrInstance set to instance, which routes it to that instance's
// subscription only.
func (b *Bus) PublishDelivery(ctx context.Context, instance string, m *bus.Message) error {
	if !instanceName.MatchString(instance) {
		return fmt.Errorf("gcppubsub: publish delivery %s: invalid instance name %q", m.ID, instance)
	}
	if err := b.ensureDeliveryTarget(ctx, instance); err != nil {
		return fmt.Errorf("gcppubsub: publish delivery %s to %s: %w", m.ID, instance, err)
	}
	if err := b.publish(ctx, b.delivery, m, map[string]string{attrInstance: instance}); err != nil {
		return fmt.Errorf("gcppubsub: publish delivery %s to %s: %w", m.ID, instance, err)
	}
	return nil
}

// ensureDeliveryTarget makes sure that instance's subscription exists
// before the first event addressed to it is published: Pub/Sub delivers a
// message only to the subscriptions that exist when it is published, and
// the instance may be creating its subscription right now. It creates the
// subscription when it is missing (with the instance's expiration, so one
// made for an instance that never comes is removed by Pub/Sub); it asks
// Pub/Sub once per instance and Bus.
func (b *Bus) ensureDeliveryTarget(ctx context.Context, instance string) error {
	if _, ok := b.deliveryTargets.Load(instance); ok {
		return nil
	}
	if b.isClosed() {
		return bus.ErrClosed
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

// publish sends m with its attributes plus extra and waits for the result.
func (b *Bus) publish(ctx context.Context, p *pubsub.Publisher, m *bus.Message, extra map[string]string) error {
	if m.ID == "" {
		return errors.New("message has no ID")
	}
	attrs := make(map[string]string, len(m.Attributes)+len(extra)+1)
	maps.Copy(attrs, m.Attributes)
	maps.Copy(attrs, extra)
	attrs[AttrMessageID] = m.ID
	return b.publishRaw(ctx, p, &pubsub.Message{Data: m.Data, Attributes: attrs, OrderingKey: m.OrderingKey})
}

// publishRaw publishes pm as is and waits for the result.
//
// When a publish with an ordering key fails, the Pub/Sub client pauses the
// key: every later publish with it fails at once until ResumePublish. The
// failed publish's error is returned to its caller, who may retry; the key
// is resumed so that later publishes are not stuck. A publish refused
// because the key was paused by an earlier failure (whose caller gave up
// waiting before the failure came back) was never sent: it is resumed and
// sent once more.
func (b *Bus) publishRaw(ctx context.Context, p *pubsub.Publisher, pm *pubsub.Message) error {
	err := b.publishOnce(ctx, p, pm)
	if pm.OrderingKey == "" || err == nil {
		return err
	}
	if errors.As(err, &pubsub.ErrPublishingPaused{}) {
		p.ResumePublish(pm.OrderingKey)
		err = b.publishOnce(ctx, p, pm)
		if err == nil {
			return nil
		}
	}
	p.ResumePublish(pm.OrderingKey)
	return err
}

// publishOnce publishes pm and waits for the result; the read lock keeps
// Close from stopping the publisher between the closed check and the call.
func (b *Bus) publishOnce(ctx context.Context, p *pubsub.Publisher, pm *pubsub.Message) error {
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return bus.ErrClosed
	}
	res := p.Publish(ctx, pm)
	b.mu.RUnlock()
	if _, err := res.Get(ctx); err != nil {
		return err
	}
	return nil
}

// ReceiveIngress calls h for each message of the shared ingress
// subscription until ctx is done (it returns nil) or the bus is closed (it
// returns bus.ErrClosed).
func (b *Bus) ReceiveIngress(ctx context.Context, h bus.Handler) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.receivers.Done()
	return b.receive(ctx, b.cfg.IngressSubscription, bus.QueueIngress, h)
}

// ReceiveDelivery creates (or verifies and reuses) the subscription
// "<DeliverySubscriptionPrefix><instance>" on the delivery topic, filtered
// to events addressed to instance, and calls h for each of them until ctx
// is done (it returns nil) or the bus is closed (it returns bus.ErrClosed).
// instance is 1-200 of [A-Za-z0-9._~+-].
func (b *Bus) ReceiveDelivery(ctx context.Context, instance string, h bus.Handler) error {
	if !instanceName.MatchString(instance) {
		return fmt.Errorf("gcppubsub: receive delivery: invalid instance name %q (1-200 of [A-Za-z0-9._~+-])", instance)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.receivers.Done()
	spec := b.deliverySubscriptionSpec(instance)
	subID := b.cfg.DeliverySubscriptionPrefix + instance
	if !validResourceID(subID) {
		return fmt.Errorf("gcppubsub: receive delivery: subscription id %q is not a valid Pub/Sub id", subID)
	}
	if _, err := b.ensureSubscription(ctx, spec); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("gcppubsub: receive delivery for %s: %w", instance, err)
	}
	b.deliveryTargets.Store(instance, struct{}{})
	b.mu.Lock()
	b.ownedDeliverySubscription[spec.Name] = true
	b.activeDeliverySubscription[spec.Name]++
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		if b.activeDeliverySubscription[spec.Name]--; b.activeDeliverySubscription[spec.Name] == 0 {
			delete(b.activeDeliverySubscription, spec.Name)
		}
		b.mu.Unlock()
	}()
	return b.receive(ctx, subID, bus.QueueDelivery, h)
}

func (b *Bus) isClosed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.closed
}

// enter registers a receiver, which Close waits for.
func (b *Bus) enter() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return bus.ErrClosed
	}
	b.receivers.Add(1)
	return nil
}

func (b *Bus) receive(ctx context.Context, subID, queue string, h bus.Handler) error {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(b.ctx, cancel)
	defer stop()

	sub := b.client.Subscriber(subID)
	sub.ReceiveSettings.MaxOutstandingMessages = b.cfg.MaxOutstanding
	sub.ReceiveSettings.NumGoroutines = b.cfg.Streams
	var sem chan struct{}
	if b.cfg.Concurrency < b.cfg.MaxOutstanding {
		sem = make(chan struct{}, b.cfg.Concurrency)
	}
	err := sub.Receive(rctx, func(mctx context.Context, pm *pubsub.Message) {
		if sem != nil {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-mctx.Done():
				pm.Nack()
				return
			}
		}
		b.handle(mctx, queue, h, pm)
	})
	switch {
	case ctx.Err() != nil:
		return nil
	case b.ctx.Err() != nil:
		return bus.ErrClosed
	case err != nil:
		return fmt.Errorf("gcppubsub: receive %s: %w", subID, err)
	}
	return nil
}

// handle runs h on one received message and settles it (see the package doc).
func (b *Bus) handle(ctx context.Context, queue string, h bus.Handler, pm *pubsub.Message) {
	m := fromPubSub(pm)
	err := h(ctx, m)
	if err == nil {
		pm.Ack()
		return
	}
	permanent := errors.Is(err, bus.ErrPermanent)
	// A failure while the receiver stops (the handler saw its context
	// cancelled) says nothing about the message: it is retried, never
	// dead-lettered, whatever the attempt.
	if !permanent && (m.DeliveryAttempt < b.cfg.MaxDeliveryAttempts || ctx.Err() != nil) {
		b.log.Debug("handler failed, message will be redelivered",
			"queue", queue, "id", m.ID, "attempt", m.DeliveryAttempt, "err", err)
		pm.Nack()
		return
	}
	reason := err.Error()
	if !permanent {
		reason = "delivery attempts exhausted: " + reason
	}
	reason = truncateUTF8(reason, maxAttrValue)
	if derr := b.deadLetter(ctx, queue, pm, reason, m.DeliveryAttempt); derr != nil {
		b.log.Error("dead-lettering failed, message will be redelivered",
			"queue", queue, "id", m.ID, "attempt", m.DeliveryAttempt, "err", derr)
		pm.Nack()
		return
	}
	pm.Ack()
	b.log.Warn("message dead-lettered", "queue", queue, "id", m.ID, "attempts", m.DeliveryAttempt, "reason", reason)
	if b.cfg.OnDeadLetter != nil {
		b.cfg.OnDeadLetter(queue, reason)
	}
}

// deadLetter publishes a copy of pm with the reason to queue's dead-letter topic.
func (b *Bus) deadLetter(ctx context.Context, queue string, pm *pubsub.Message, reason string, attempts int) error {
	attrs := make(map[string]string, len(pm.Attributes)+3)
	maps.Copy(attrs, pm.Attributes)
	if attrs[AttrMessageID] == "" {
		attrs[AttrMessageID] = pm.ID
	}
	attrs[bus.AttrDeadReason] = reason
	attrs[bus.AttrDeadAttempts] = strconv.Itoa(attempts)
	p := b.ingressDead
	if queue == bus.QueueDelivery {
		p = b.deliveryDead
	}
	// The copy must reach the dead-letter topic even when the receiver is
	// stopping: otherwise the message is retried past its last attempt.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deadLetterPublishTimeout)
	defer cancel()
	res := p.Publish(dctx, &pubsub.Message{Data: pm.Data, Attributes: attrs, OrderingKey: pm.OrderingKey})
	if _, err := res.Get(dctx); err != nil {
		if pm.OrderingKey != "" {
			p.ResumePublish(pm.OrderingKey) // the message is nacked and dead-lettered again later
		}
		return fmt.Errorf("publish to %s dead-letter topic: %w", queue, err)
	}
	return nil
}

// fromPubSub converts a received message; the ID attribute becomes Message.ID.
func fromPubSub(pm *pubsub.Message) *bus.Message {
	m := &bus.Message{ID: pm.Attributes[AttrMessageID], Data: pm.Data, OrderingKey: pm.OrderingKey, DeliveryAttempt: 1}
	if m.ID == "" {
		m.ID = pm.ID
	}
	if len(pm.Attributes) > 1 || (len(pm.Attributes) == 1 && pm.Attributes[AttrMessageID] == "") {
		m.Attributes = make(map[string]string, len(pm.Attributes))
		for k, v := range pm.Attributes {
			if k != AttrMessageID {
				m.Attributes[k] = v
			}
		}
	}
	if pm.DeliveryAttempt != nil && *pm.DeliveryAttempt > 0 {
		m.DeliveryAttempt = *pm.DeliveryAttempt
	}
	return m
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// Ping reports whether Pub/Sub answers, by reading the ingress topic.
func (b *Bus) Ping(ctx context.Context) error {
	if b.isClosed() {
		return bus.ErrClosed
	}
	if err := b.ensureTopicExists(ctx, b.topicName(b.cfg.IngressTopic)); err != nil {
		return fmt.Errorf("gcppubsub: ping: %w", err)
	}
	return nil
}

// Close stops the receivers and waits for their handlers to return, deletes
// the delivery subscriptions this Bus created, flushes the publishers and
// closes the client. It is safe to call more than once.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()

	b.cancel()
	b.receivers.Wait()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	for name := range b.ownedDeliverySubscription {
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
