package bus

import (
	"fmt"
	"time"

	"github.com/go-routing-service/routingservice/internal/ident"
)

// Config is bus.* in config.yaml: the engine, the names of the queues and
// the delivery policy every engine shares. Each engine's own keys are a
// section of its own (bus.nats.*, bus.pubsub.*), kept by its package.
type Config struct {
	// Type names the engine (the engines are listed in internal/config).
	Type string `yaml:"type"`
	// The names of the topics and the shared subscription, on engines
	// that name them so (Pub/Sub). NATS names its streams and consumers
	// from bus.nats.subject_prefix instead and ignores these.
	IngressTopic        string        `yaml:"ingress_topic"`
	IngressSubscription string        `yaml:"ingress_subscription"`
	DeliveryTopic       string        `yaml:"delivery_topic"`
	MaxDeliveryAttempts int           `yaml:"max_delivery_attempts"`
	AckDeadline         time.Duration `yaml:"ack_deadline"`
	MinBackoff          time.Duration `yaml:"min_backoff"`
	MaxBackoff          time.Duration `yaml:"max_backoff"`
	MaxOutstanding      int           `yaml:"max_outstanding"`
	// The dead-letter topics, on engines that name them so (Pub/Sub).
	IngressDeadLetterTopic  string `yaml:"ingress_dead_letter_topic"`
	DeliveryDeadLetterTopic string `yaml:"delivery_dead_letter_topic"`
	// PackDeliveries sends the delivery events that one pipeline batch
	// addresses to one realtime instance as one bus message: one engine
	// write, delivery and ack for many events. Unset: the engine's
	// default (Engine.PacksDeliveries: on for NATS, embedded and external,
	// off for Pub/Sub, where a pack's ordering key carries every event
	// from one pipeline to one instance and Pub/Sub caps one ordering key
	// at 1 MB/s). Realtime instances read packs whatever it says.
	PackDeliveries *bool `yaml:"pack_deliveries"`
}

// DefaultConfig is the configuration with no file: the embedded engine.
func DefaultConfig() Config {
	return Config{
		Type:                    "embedded",
		IngressTopic:            "routing-ingress",
		IngressSubscription:     "routing-pipeline",
		DeliveryTopic:           "routing-delivery",
		IngressDeadLetterTopic:  "routing-ingress-dlq",
		DeliveryDeadLetterTopic: "routing-delivery-dlq",
		MaxDeliveryAttempts:     5,
		AckDeadline:             30 * time.Second,
		MinBackoff:              time.Second,
		MaxBackoff:              60 * time.Second,
		MaxOutstanding:          1000,
	}
}

// Check reports each problem of c's keys to bad, keys relative to bus
// ("ack_deadline"). It does not check Type: the engine list does.
func (c Config) Check(bad func(key, msg string)) {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"ack_deadline", c.AckDeadline}, {"min_backoff", c.MinBackoff}, {"max_backoff", c.MaxBackoff}} {
		if d.v <= 0 {
			bad(d.key, "must be a positive duration")
		}
	}
	if c.MaxBackoff < c.MinBackoff {
		bad("max_backoff", "must not be shorter than bus.min_backoff")
	}
	if c.MaxOutstanding < 1 {
		bad("max_outstanding", "must be at least 1")
	}
	if c.MaxDeliveryAttempts < 1 || c.MaxDeliveryAttempts > 1000 {
		bad("max_delivery_attempts", "must be between 1 and 1000 (Pub/Sub accepts 5 to 100)")
	}
	for _, n := range []struct{ key, v string }{
		{"ingress_topic", c.IngressTopic}, {"ingress_subscription", c.IngressSubscription}, {"delivery_topic", c.DeliveryTopic},
		{"ingress_dead_letter_topic", c.IngressDeadLetterTopic}, {"delivery_dead_letter_topic", c.DeliveryDeadLetterTopic},
	} {
		if !ident.Valid(n.v) {
			bad(n.key, fmt.Sprintf("must be %s, got %q", ident.Rule, n.v))
		}
	}
}

// Options is the portable bus's delivery policy from c; packs says
// whether delivery events are packed (c.PackDeliveries, or the engine's
// default). The caller adds what comes from elsewhere: the handlers'
// concurrency, the hooks, the logger and tracing.
func (c Config) Options(packs bool) Options {
	return Options{
		MaxDeliveryAttempts: c.MaxDeliveryAttempts,
		MinBackoff:          c.MinBackoff,
		MaxBackoff:          c.MaxBackoff,
		MaxOutstanding:      c.MaxOutstanding,
		PackDeliveries:      packs,
	}
}
