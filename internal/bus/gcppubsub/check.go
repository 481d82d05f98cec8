package gcppubsub

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"cloud.google.com/go/iam/apiv1/iampb"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Roles that grant the Pub/Sub service agent what dead-lettering needs.
var (
	publisherRoles  = []string{"roles/pubsub.publisher", "roles/pubsub.editor", "roles/pubsub.admin", "roles/editor", "roles/owner"}
	subscriberRoles = []string{"roles/pubsub.subscriber", "roles/pubsub.editor", "roles/pubsub.admin", "roles/editor", "roles/owner"}
)

// serviceAgentSuffix ends the Pub/Sub service agent's address,
// service-<project number>@gcp-sa-pubsub.iam.gserviceaccount.com.
const serviceAgentSuffix = "@gcp-sa-pubsub.iam.gserviceaccount.com"

// source is a subscription whose failed messages go to deadTopic.
type source struct{ name, deadTopic string }

// CheckDeadLetterSetup reports, as one error listing every problem, what
// keeps dead-lettering from working: a dead-letter topic or hold
// subscription that is missing, a subscription (the ingress one and the
// delivery subscriptions this Bus receives on) without its dead-letter or
// retry policy or with other values than configured, and, where the
// endpoint implements IAM, permissions: this service's right to publish to
// the dead-letter topics and consume the hold subscriptions, and the Pub/Sub
// service agent's publisher role on each dead-letter topic and subscriber
// role on each source subscription (Pub/Sub needs both to dead-letter by
// itself). Grants the check cannot read (no getIamPolicy permission, or a
// project-level grant) are logged as unverified, not reported. An endpoint
// without IAM (the emulator) skips the permission checks. It returns nil
// when nothing is wrong.
func (b *Driver) CheckDeadLetterSetup(ctx context.Context) error {
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return driver.ErrClosed
	}
	active := slices.Sorted(maps.Keys(b.activeDeliverySubscription))
	b.mu.RUnlock()

	var problems []error
	report := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }

	deadTopics := []string{b.topicName(b.cfg.IngressDeadLetterTopic), b.topicName(b.cfg.DeliveryDeadLetterTopic)}
	for _, topic := range deadTopics {
		_, err := b.client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: topic})
		switch {
		case status.Code(err) == codes.NotFound:
			report("dead-letter topic %s does not exist", topic)
		case err != nil:
			return fmt.Errorf("gcppubsub: check dead-letter setup: get topic %s: %w", topic, err)
		}
	}

	sources := []source{{b.subscriptionName(b.cfg.IngressSubscription), deadTopics[0]}}
	for _, name := range active {
		sources = append(sources, source{name, deadTopics[1]})
	}
	for _, src := range sources {
		sub, err := b.client.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: src.name})
		if status.Code(err) == codes.NotFound {
			report("subscription %s does not exist", src.name)
			continue
		}
		if err != nil {
			return fmt.Errorf("gcppubsub: check dead-letter setup: get subscription %s: %w", src.name, err)
		}
		dlp := sub.GetDeadLetterPolicy()
		switch {
		case dlp.GetDeadLetterTopic() == "":
			report("subscription %s has no dead-letter policy", src.name)
		case dlp.GetDeadLetterTopic() != src.deadTopic:
			report("subscription %s dead-letters to %s, want %s", src.name, dlp.GetDeadLetterTopic(), src.deadTopic)
		case int(dlp.GetMaxDeliveryAttempts()) != b.cfg.MaxDeliveryAttempts:
			report("subscription %s dead-letters after %d attempts, want %d", src.name, dlp.GetMaxDeliveryAttempts(), b.cfg.MaxDeliveryAttempts)
		}
		if sub.GetRetryPolicy() == nil {
			report("subscription %s has no retry policy (nacked messages are redelivered at once)", src.name)
		}
	}

	var holds []string
	for i, topic := range deadTopics {
		id := holdSubscriptionID(b.cfg.IngressDeadLetterTopic)
		if i == 1 {
			id = holdSubscriptionID(b.cfg.DeliveryDeadLetterTopic)
		}
		name := b.subscriptionName(id)
		holds = append(holds, name)
		sub, err := b.client.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: name})
		switch {
		case status.Code(err) == codes.NotFound:
			report("hold subscription %s does not exist: messages dead-lettered now are dropped", name)
		case err != nil:
			return fmt.Errorf("gcppubsub: check dead-letter setup: get subscription %s: %w", name, err)
		case sub.GetTopic() != topic:
			report("hold subscription %s is attached to %s, want %s", name, sub.GetTopic(), topic)
		}
	}

	if err := b.checkPermissions(ctx, deadTopics, holds, sources, report); err != nil {
		return fmt.Errorf("gcppubsub: check dead-letter setup: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("gcppubsub: dead-letter setup: %w", errors.Join(problems...))
	}
	return nil
}

// checkPermissions runs the IAM part of CheckDeadLetterSetup.
func (b *Driver) checkPermissions(ctx context.Context, deadTopics, holds []string, sources []source,
	report func(string, ...any)) error {
	unsupported := func(err error) bool { return status.Code(err) == codes.Unimplemented }

	// This service's own permissions.
	for _, topic := range deadTopics {
		resp, err := b.client.TopicAdminClient.TestIamPermissions(ctx, &iampb.TestIamPermissionsRequest{
			Resource: topic, Permissions: []string{"pubsub.topics.publish"},
		})
		if unsupported(err) {
			b.log.Info("dead-letter permission checks skipped: the endpoint does not implement IAM")
			return nil
		}
		if err != nil {
			return fmt.Errorf("test permissions on %s: %w", topic, err)
		}
		if !slices.Contains(resp.GetPermissions(), "pubsub.topics.publish") {
			report("this service lacks pubsub.topics.publish on %s (needed to dead-letter with a reason and to replay)", topic)
		}
	}
	for _, sub := range holds {
		resp, err := b.client.SubscriptionAdminClient.TestIamPermissions(ctx, &iampb.TestIamPermissionsRequest{
			Resource: sub, Permissions: []string{"pubsub.subscriptions.consume"},
		})
		if err != nil {
			if status.Code(err) == codes.NotFound {
				continue // already reported
			}
			return fmt.Errorf("test permissions on %s: %w", sub, err)
		}
		if !slices.Contains(resp.GetPermissions(), "pubsub.subscriptions.consume") {
			report("this service lacks pubsub.subscriptions.consume on %s (needed to list, replay and purge dead messages)", sub)
		}
	}

	// The Pub/Sub service agent's grants, as far as resource policies show them.
	for _, topic := range deadTopics {
		pol, err := b.client.TopicAdminClient.GetIamPolicy(ctx, &iampb.GetIamPolicyRequest{Resource: topic})
		if err != nil {
			b.log.Warn("cannot verify the Pub/Sub service agent's publisher role", "topic", topic, "err", err)
			continue
		}
		if !grantsServiceAgent(pol, publisherRoles) {
			report("the Pub/Sub service agent (service-<project number>%s) has no publisher role on %s: Pub/Sub cannot dead-letter there (a project-level grant is not visible to this check)",
				serviceAgentSuffix, topic)
		}
	}
	for _, src := range sources {
		pol, err := b.client.SubscriptionAdminClient.GetIamPolicy(ctx, &iampb.GetIamPolicyRequest{Resource: src.name})
		if err != nil {
			b.log.Warn("cannot verify the Pub/Sub service agent's subscriber role", "subscription", src.name, "err", err)
			continue
		}
		if !grantsServiceAgent(pol, subscriberRoles) {
			report("the Pub/Sub service agent (service-<project number>%s) has no subscriber role on %s: Pub/Sub cannot forward its dead messages (a project-level grant is not visible to this check)",
				serviceAgentSuffix, src.name)
		}
	}
	return nil
}

// grantsServiceAgent reports whether pol binds one of roles to the Pub/Sub service agent.
func grantsServiceAgent(pol *iampb.Policy, roles []string) bool {
	for _, bnd := range pol.GetBindings() {
		if !slices.Contains(roles, bnd.GetRole()) {
			continue
		}
		for _, m := range bnd.GetMembers() {
			if strings.HasPrefix(m, "serviceAccount:service-") && strings.HasSuffix(m, serviceAgentSuffix) {
				return true
			}
		}
	}
	return false
}
