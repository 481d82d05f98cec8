package gcppubsub

import (
	"context"
	"fmt"
	"strings"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Topology is what Inspect found of the bus's topics and shared
// subscriptions (full resource names).
type Topology struct {
	Topics, MissingTopics               []string
	Subscriptions, MissingSubscriptions []string
	// Outdated are existing subscriptions whose settings New would update
	// (each with the fields that differ).
	Outdated []string
}

// Inspect connects to Pub/Sub as New does (same opts) and reports which
// topics and shared subscriptions of cfg exist, without creating, updating
// or deleting anything. A missing one is no error (New creates it); a
// subscription New would refuse (a setting Pub/Sub cannot change differs)
// is.
func Inspect(ctx context.Context, cfg Config, opts ...option.ClientOption) (Topology, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Topology{}, err
	}
	client, err := pubsub.NewClient(ctx, cfg.ProjectID, opts...)
	if err != nil {
		return Topology{}, fmt.Errorf("gcppubsub: connect to project %s: %w", cfg.ProjectID, err)
	}
	defer client.Close()
	b := &Driver{cfg: cfg, client: client}
	var t Topology
	for _, name := range b.sharedTopics() {
		_, err := client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: name})
		switch {
		case status.Code(err) == codes.NotFound:
			t.MissingTopics = append(t.MissingTopics, name)
		case err != nil:
			return Topology{}, fmt.Errorf("gcppubsub: get topic %s: %w", name, err)
		default:
			t.Topics = append(t.Topics, name)
		}
	}
	for _, want := range b.sharedSubscriptions() {
		got, err := client.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: want.Name})
		switch {
		case status.Code(err) == codes.NotFound:
			t.MissingSubscriptions = append(t.MissingSubscriptions, want.Name)
			continue
		case err != nil:
			return Topology{}, fmt.Errorf("gcppubsub: get subscription %s: %w", want.Name, err)
		}
		fixed, differs := compareSubscription(got, want)
		if len(differs) > 0 {
			return Topology{}, fmt.Errorf("gcppubsub: %w", immutableDiffers(want.Name, differs))
		}
		t.Subscriptions = append(t.Subscriptions, want.Name)
		if len(fixed) > 0 {
			t.Outdated = append(t.Outdated, want.Name+" ("+strings.Join(fixed, ", ")+")")
		}
	}
	return t, nil
}
