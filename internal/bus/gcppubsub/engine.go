package gcppubsub

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/api/option"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Settings are bus.pubsub.* in config.yaml.
type Settings struct {
	ProjectID                      string        `yaml:"project_id"`
	DeliverySubscriptionPrefix     string        `yaml:"delivery_subscription_prefix"`
	DeliverySubscriptionExpiration time.Duration `yaml:"delivery_subscription_expiration"`
	// DeliveryTopicTTL: the pipeline role deletes the delivery topic
	// ("<bus.delivery_topic>.<instance>") of a realtime instance absent from
	// presence this long whose subscription is gone (an instance that died
	// without removing its own; at least 1h).
	DeliveryTopicTTL time.Duration `yaml:"delivery_topic_ttl"`
	// LegacySharedDelivery also reads and, for instances that have no topic
	// of their own, publishes to the shared delivery topic with its
	// filtered subscription per instance (the layout before 0.3.0), so
	// that a deployment moves over without losing an event. Turn it off
	// once no process older than 0.3.0 runs.
	LegacySharedDelivery bool `yaml:"legacy_shared_delivery"`
	// Endpoint overrides the API endpoint (PUBSUB_EMULATOR_HOST is honoured too).
	Endpoint string `yaml:"endpoint"`
	// CredentialsFile of a service account; default: application default credentials.
	CredentialsFile string `yaml:"credentials_file"`
}

// DefaultSettings are the keys' defaults.
func DefaultSettings() Settings {
	return Settings{
		DeliverySubscriptionPrefix:     "routing-delivery-",
		DeliverySubscriptionExpiration: 24 * time.Hour,
		DeliveryTopicTTL:               48 * time.Hour,
		LegacySharedDelivery:           true,
	}
}

// Engine is the bus on Google Cloud Pub/Sub (bus.type pubsub).
type Engine struct {
	Settings Settings
}

var _ bus.Engine = Engine{}

// Shared: every instance of a deployment uses the same project.
func (Engine) Shared() bool { return true }

// System is Pub/Sub.
func (Engine) System() string { return "gcp_pubsub" }

// PacksDeliveries: off, since a pack's ordering key carries every event
// from one pipeline to one instance and Pub/Sub caps one ordering key at
// 1 MB/s.
func (Engine) PacksDeliveries() bool { return false }

// Unused: the NATS section.
func (Engine) Unused() []string { return []string{"nats"} }

// Check requires a project and keeps the bus's keys within what Pub/Sub
// accepts.
func (e Engine) Check(c bus.Config, env bus.Env, bad func(key, msg string)) {
	s := e.Settings
	if s.ProjectID == "" {
		bad("pubsub.project_id", "is required when bus.type is pubsub")
	}
	if c.AckDeadline < 10*time.Second || c.AckDeadline > 600*time.Second {
		bad("ack_deadline", "must be between 10s and 600s for Pub/Sub")
	}
	if c.MaxBackoff > 600*time.Second {
		bad("max_backoff", "must be at most 600s for Pub/Sub")
	}
	if s.DeliverySubscriptionExpiration < 24*time.Hour {
		bad("pubsub.delivery_subscription_expiration", "must be at least 24h (the Pub/Sub minimum)")
	}
	if s.DeliveryTopicTTL < time.Hour {
		bad("pubsub.delivery_topic_ttl", fmt.Sprintf("must be at least 1h, got %s", s.DeliveryTopicTTL))
	}
	// Pub/Sub ids are at most 255 characters.
	if n := len(c.DeliveryTopic) + 1 + len(env.Instance); n > 255 {
		bad("delivery_topic", fmt.Sprintf("with instance_id names the instance's delivery topic %q: %d characters, Pub/Sub allows 255",
			c.DeliveryTopic+"."+env.Instance, n))
	}
}

// Preflight checks the credentials file: JSON with a "type".
func (e Engine) Preflight(bad func(key string, err error)) {
	path := e.Settings.CredentialsFile
	if path == "" {
		return
	}
	if err := checkCredentials(path); err != nil {
		bad("pubsub.credentials_file", err)
	}
}

// checkCredentials checks a Google credentials JSON file.
func checkCredentials(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var f struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%s is not a JSON credentials file: %w", path, err)
	}
	if strings.TrimSpace(f.Type) == "" {
		return fmt.Errorf("%s has no \"type\" (service_account, external_account, ...)", path)
	}
	return nil
}

// DriverConfig is the driver's configuration and client options
// (endpoint, credentials). PUBSUB_EMULATOR_HOST, when set, points the
// client at an emulator.
func (e Engine) DriverConfig(c bus.Config, env bus.Env) (Config, []option.ClientOption) {
	s := e.Settings
	var opts []option.ClientOption
	if s.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(s.Endpoint))
	}
	if s.CredentialsFile != "" {
		opts = append(opts, option.WithAuthCredentialsFile(option.ServiceAccount, s.CredentialsFile))
	}
	return Config{
		ProjectID:                      s.ProjectID,
		IngressTopic:                   c.IngressTopic,
		IngressSubscription:            c.IngressSubscription,
		DeliveryTopic:                  c.DeliveryTopic,
		DeliverySubscriptionPrefix:     s.DeliverySubscriptionPrefix,
		DeliverySubscriptionExpiration: s.DeliverySubscriptionExpiration,
		LegacySharedDelivery:           s.LegacySharedDelivery,
		IngressDeadLetterTopic:         c.IngressDeadLetterTopic,
		DeliveryDeadLetterTopic:        c.DeliveryDeadLetterTopic,
		MaxDeliveryAttempts:            c.MaxDeliveryAttempts,
		AckDeadline:                    c.AckDeadline,
		MinBackoff:                     c.MinBackoff,
		MaxBackoff:                     c.MaxBackoff,
		MaxOutstanding:                 c.MaxOutstanding,
		IngressPublishTimeout:          env.PublishTimeout,
		Logger:                         env.Logger,
	}, opts
}

// Open opens the driver.
func (e Engine) Open(ctx context.Context, c bus.Config, env bus.Env) (driver.Driver, func() error, error) {
	pc, opts := e.DriverConfig(c, env)
	d, err := New(ctx, pc, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("bus (pubsub, project %s; config keys bus.* and bus.pubsub.*): %w", pc.ProjectID, err)
	}
	return d, func() error { return nil }, nil
}

// Inspect says which of the topics and shared subscriptions exist, and
// which New would create or update.
func (e Engine) Inspect(ctx context.Context, c bus.Config, env bus.Env) (string, error) {
	pc, opts := e.DriverConfig(c, env)
	topo, err := Inspect(ctx, pc, opts...)
	where := "project " + pc.ProjectID
	if ep := e.Settings.Endpoint; ep != "" {
		where += " at " + ep
	} else if ep := os.Getenv("PUBSUB_EMULATOR_HOST"); ep != "" {
		where += " at the emulator " + ep
	}
	if err != nil {
		return "", fmt.Errorf("pubsub %s: %w", where, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pubsub %s; %s, %s", where,
		bus.Resources{Noun: "topic", Found: topo.Topics, Missing: topo.MissingTopics},
		bus.Resources{Noun: "subscription", Found: topo.Subscriptions, Missing: topo.MissingSubscriptions})
	if missing := slices.Concat(topo.MissingTopics, topo.MissingSubscriptions); len(missing) > 0 {
		fmt.Fprintf(&b, "; serve creates %s", strings.Join(shortNames(missing), ", "))
	}
	if len(topo.Outdated) > 0 {
		fmt.Fprintf(&b, "; serve updates %s", strings.Join(shortNames(topo.Outdated), ", "))
	}
	return b.String(), nil
}

// shortNames drops "projects/<p>/topics/" and the like from resource names.
func shortNames(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		parts := strings.SplitN(n, "/", 4)
		if len(parts) == 4 && parts[0] == "projects" {
			n = strings.TrimSuffix(parts[2], "s") + " " + parts[3]
		}
		out[i] = n
	}
	return out
}

// Maintain runs the delivery topic janitor (see Janitor) until ctx is
// done: the pipeline role, which every deployment has and which runs on
// fewer instances than realtime, removes the delivery topics of realtime
// instances that died without removing theirs; several janitors at once
// are harmless. It has its own client, apart from the bus's. A janitor
// that cannot start is logged, never fatal: the topics of instances gone
// cost nothing but a place in the project's topic quota.
func (e Engine) Maintain(ctx context.Context, c bus.Config, env bus.Env, present bus.InstancePresence) {
	pc, opts := e.DriverConfig(c, env)
	j, err := NewJanitor(ctx, pc, JanitorOptions{
		TopicTTL: e.Settings.DeliveryTopicTTL,
		Presence: present,
		Logger:   env.Logger,
	}, opts...)
	if err != nil {
		env.Logger.Warn("delivery topic janitor not started", "err", err)
		return
	}
	defer j.Close()
	j.Run(ctx)
}
