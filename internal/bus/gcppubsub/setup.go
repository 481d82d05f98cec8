package gcppubsub

import (
	"context"
	"fmt"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

// holdAckDeadline is the lease a dead-letter operation takes on the dead
// messages it reads; they return to the queue after it if the operation dies.
const holdAckDeadline = 60 * time.Second

// holdRetention is how long a dead message stays in its hold subscription:
// the Pub/Sub maximum for a subscription.
const holdRetention = 7 * 24 * time.Hour

func (b *Driver) topicName(id string) string {
	return "projects/" + b.cfg.ProjectID + "/topics/" + id
}

func (b *Driver) subscriptionName(id string) string {
	return "projects/" + b.cfg.ProjectID + "/subscriptions/" + id
}

// sharedTopics are the full names of the topics every instance shares (the
// delivery topics are each instance's own; the shared delivery topic of
// the earlier layout is kept under LegacySharedDelivery only).
func (b *Driver) sharedTopics() []string {
	topics := []string{b.topicName(b.cfg.IngressTopic),
		b.topicName(b.cfg.IngressDeadLetterTopic), b.topicName(b.cfg.DeliveryDeadLetterTopic)}
	if b.cfg.LegacySharedDelivery {
		topics = append(topics, b.topicName(b.cfg.DeliveryTopic))
	}
	return topics
}

// sharedSubscriptions are the subscriptions every instance shares (the
// delivery subscriptions are each instance's own).
func (b *Driver) sharedSubscriptions() []*pubsubpb.Subscription {
	return []*pubsubpb.Subscription{
		b.ingressSubscriptionSpec(),
		b.holdSubscriptionSpec(b.cfg.IngressDeadLetterTopic),
		b.holdSubscriptionSpec(b.cfg.DeliveryDeadLetterTopic),
	}
}

// setup creates or verifies every topic and shared subscription the bus uses.
func (b *Driver) setup(ctx context.Context) error {
	for _, t := range b.sharedTopics() {
		if err := b.ensureTopic(ctx, t); err != nil {
			return err
		}
	}
	for _, want := range b.sharedSubscriptions() {
		if _, err := b.ensureSubscription(ctx, want); err != nil {
			return err
		}
	}
	return nil
}

func (b *Driver) ensureTopic(ctx context.Context, name string) error {
	_, err := b.client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: name})
	if err == nil {
		return nil
	}
	if status.Code(err) != codes.NotFound {
		return fmt.Errorf("get topic %s: %w", name, err)
	}
	_, err = b.client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: name})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create topic %s: %w", name, err)
	}
	if err == nil {
		b.log.Info("created Pub/Sub topic", "topic", name)
	}
	return nil
}

func (b *Driver) retryPolicy() *pubsubpb.RetryPolicy {
	return &pubsubpb.RetryPolicy{
		MinimumBackoff: durationpb.New(b.cfg.MinBackoff),
		MaximumBackoff: durationpb.New(b.cfg.MaxBackoff),
	}
}

func (b *Driver) deadLetterPolicy(deadLetterTopic string) *pubsubpb.DeadLetterPolicy {
	return &pubsubpb.DeadLetterPolicy{
		DeadLetterTopic:     b.topicName(deadLetterTopic),
		MaxDeliveryAttempts: int32(b.cfg.MaxDeliveryAttempts),
	}
}

func (b *Driver) ingressSubscriptionSpec() *pubsubpb.Subscription {
	return &pubsubpb.Subscription{
		Name:               b.subscriptionName(b.cfg.IngressSubscription),
		Topic:              b.topicName(b.cfg.IngressTopic),
		AckDeadlineSeconds: int32(b.cfg.AckDeadline / time.Second),
		// An empty policy (no TTL) means the subscription never expires.
		ExpirationPolicy: &pubsubpb.ExpirationPolicy{},
		DeadLetterPolicy: b.deadLetterPolicy(b.cfg.IngressDeadLetterTopic),
		RetryPolicy:      b.retryPolicy(),
		// One recipient's envelopes are stored in the order accepted.
		EnableMessageOrdering: true,
	}
}

func (b *Driver) holdSubscriptionSpec(deadLetterTopic string) *pubsubpb.Subscription {
	return &pubsubpb.Subscription{
		Name:                     b.subscriptionName(holdSubscriptionID(deadLetterTopic)),
		Topic:                    b.topicName(deadLetterTopic),
		AckDeadlineSeconds:       int32(holdAckDeadline / time.Second),
		MessageRetentionDuration: durationpb.New(holdRetention),
		ExpirationPolicy:         &pubsubpb.ExpirationPolicy{},
	}
}

// deliverySubscriptionSpec is the subscription on an instance's own
// delivery topic (id: see DeliveryTopicID): every event on the topic is
// the instance's, so it has no filter.
func (b *Driver) deliverySubscriptionSpec(id string) *pubsubpb.Subscription {
	return &pubsubpb.Subscription{
		Name:               b.subscriptionName(id),
		Topic:              b.topicName(id),
		AckDeadlineSeconds: int32(b.cfg.AckDeadline / time.Second),
		ExpirationPolicy:   &pubsubpb.ExpirationPolicy{Ttl: durationpb.New(b.cfg.DeliverySubscriptionExpiration)},
		DeadLetterPolicy:   b.deadLetterPolicy(b.cfg.DeliveryDeadLetterTopic),
		RetryPolicy:        b.retryPolicy(),
		// One recipient's envelopes are delivered in the order accepted.
		EnableMessageOrdering: true,
	}
}

// legacyDeliverySubscriptionSpec is instance's subscription on the shared
// delivery topic in the earlier layout (LegacySharedDelivery), filtered on
// the instance attribute.
func (b *Driver) legacyDeliverySubscriptionSpec(instance string) *pubsubpb.Subscription {
	return &pubsubpb.Subscription{
		Name:               b.subscriptionName(b.cfg.DeliverySubscriptionPrefix + instance),
		Topic:              b.topicName(b.cfg.DeliveryTopic),
		Filter:             deliveryFilter(instance),
		AckDeadlineSeconds: int32(b.cfg.AckDeadline / time.Second),
		ExpirationPolicy:   &pubsubpb.ExpirationPolicy{Ttl: durationpb.New(b.cfg.DeliverySubscriptionExpiration)},
		DeadLetterPolicy:   b.deadLetterPolicy(b.cfg.DeliveryDeadLetterTopic),
		RetryPolicy:        b.retryPolicy(),
		// One recipient's envelopes are delivered in the order accepted.
		EnableMessageOrdering: true,
	}
}

// ensureSubscription creates want, or verifies an existing subscription of
// that name against it: settings Pub/Sub lets us change are updated, the
// others (topic, filter, detachment, message ordering) make an error that
// says what differs.
// It reports whether it created the subscription.
func (b *Driver) ensureSubscription(ctx context.Context, want *pubsubpb.Subscription) (created bool, err error) {
	sac := b.client.SubscriptionAdminClient
	got, err := sac.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: want.Name})
	if status.Code(err) == codes.NotFound {
		_, err = sac.CreateSubscription(ctx, want)
		if err == nil {
			b.log.Info("created Pub/Sub subscription", "subscription", want.Name, "topic", want.Topic)
			return true, nil
		}
		if status.Code(err) != codes.AlreadyExists {
			return false, fmt.Errorf("create subscription %s: %w", want.Name, err)
		}
		got, err = sac.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: want.Name})
	}
	if err != nil {
		return false, fmt.Errorf("get subscription %s: %w", want.Name, err)
	}
	fixed, differs := compareSubscription(got, want)
	if len(differs) > 0 {
		return false, immutableDiffers(want.Name, differs)
	}
	if len(fixed) == 0 {
		return false, nil
	}
	_, err = sac.UpdateSubscription(ctx, &pubsubpb.UpdateSubscriptionRequest{
		Subscription: want,
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: fixed},
	})
	if err != nil {
		return false, fmt.Errorf("update subscription %s (%s): %w", want.Name, strings.Join(fixed, ", "), err)
	}
	b.log.Info("updated Pub/Sub subscription settings", "subscription", want.Name, "fields", fixed)
	return false, nil
}

// immutableDiffers is the error of a subscription whose settings differ
// in ways Pub/Sub cannot change.
func immutableDiffers(name string, differs []string) error {
	return fmt.Errorf("subscription %s exists with settings Pub/Sub cannot change: %s; delete it or change the configuration",
		name, strings.Join(differs, "; "))
}

// compareSubscription returns the update-mask paths of the mutable settings
// in which got differs from want, and a description of each immutable one.
func compareSubscription(got, want *pubsubpb.Subscription) (fixed, differs []string) {
	if got.GetTopic() != want.GetTopic() {
		differs = append(differs, fmt.Sprintf("topic is %q, want %q", got.GetTopic(), want.GetTopic()))
	}
	if got.GetFilter() != want.GetFilter() {
		differs = append(differs, fmt.Sprintf("filter is %q, want %q", got.GetFilter(), want.GetFilter()))
	}
	if got.GetDetached() {
		differs = append(differs, "it is detached from its topic")
	}
	if want.GetEnableMessageOrdering() && !got.GetEnableMessageOrdering() {
		differs = append(differs, "message ordering is not enabled, and Pub/Sub can only enable it when a subscription is created: "+
			"the subscription must be recreated (delete it, and it is created with ordering on the next start)")
	}
	if got.GetAckDeadlineSeconds() != want.GetAckDeadlineSeconds() {
		fixed = append(fixed, "ack_deadline_seconds")
	}
	if !sameDeadLetterPolicy(got.GetDeadLetterPolicy(), want.GetDeadLetterPolicy()) {
		fixed = append(fixed, "dead_letter_policy")
	}
	if !sameRetryPolicy(got.GetRetryPolicy(), want.GetRetryPolicy()) {
		fixed = append(fixed, "retry_policy")
	}
	if want.GetExpirationPolicy() != nil && expirationTTL(got) != expirationTTL(want) {
		fixed = append(fixed, "expiration_policy")
	}
	if want.GetMessageRetentionDuration() != nil &&
		got.GetMessageRetentionDuration().AsDuration() != want.GetMessageRetentionDuration().AsDuration() {
		fixed = append(fixed, "message_retention_duration")
	}
	return fixed, differs
}

func sameDeadLetterPolicy(a, b *pubsubpb.DeadLetterPolicy) bool {
	if a.GetDeadLetterTopic() == "" && b.GetDeadLetterTopic() == "" {
		return true
	}
	return a.GetDeadLetterTopic() == b.GetDeadLetterTopic() && a.GetMaxDeliveryAttempts() == b.GetMaxDeliveryAttempts()
}

func sameRetryPolicy(a, b *pubsubpb.RetryPolicy) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.GetMinimumBackoff().AsDuration() == b.GetMinimumBackoff().AsDuration() &&
		a.GetMaximumBackoff().AsDuration() == b.GetMaximumBackoff().AsDuration()
}

// expirationTTL is the subscription's inactivity TTL; 0 means it never expires.
func expirationTTL(s *pubsubpb.Subscription) time.Duration {
	if s.GetExpirationPolicy().GetTtl() == nil {
		return 0
	}
	return s.GetExpirationPolicy().GetTtl().AsDuration()
}

func deliveryFilter(instance string) string {
	// instance is checked against instanceName: no quoting needed.
	return "attributes." + attrInstance + ` = "` + instance + `"`
}

// ensureTopicExists reads the topic: a cheap call that proves Pub/Sub answers.
func (b *Driver) ensureTopicExists(ctx context.Context, name string) error {
	if _, err := b.client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: name}); err != nil {
		return fmt.Errorf("get topic %s: %w", name, err)
	}
	return nil
}

// deleteTopic deletes the topic; one already gone is fine.
func (b *Driver) deleteTopic(ctx context.Context, name string) error {
	err := b.client.TopicAdminClient.DeleteTopic(ctx, &pubsubpb.DeleteTopicRequest{Topic: name})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("delete topic %s: %w", name, err)
	}
	return nil
}

// deleteSubscription deletes the subscription; one already gone is fine.
func (b *Driver) deleteSubscription(ctx context.Context, name string) error {
	err := b.client.SubscriptionAdminClient.DeleteSubscription(ctx, &pubsubpb.DeleteSubscriptionRequest{Subscription: name})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("delete subscription %s: %w", name, err)
	}
	return nil
}
