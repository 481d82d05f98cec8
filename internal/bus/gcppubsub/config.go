package gcppubsub

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"
)

// Config configures a Driver. Zero fields take the defaults named on each field.
type Config struct {
	// ProjectID is the Google Cloud project that holds every topic and
	// subscription. Required.
	ProjectID string

	// IngressTopic receives envelopes accepted by the API. Default "routing-ingress".
	IngressTopic string
	// IngressSubscription is the durable subscription the pipeline shares.
	// Default "routing-pipeline".
	IngressSubscription string
	// DeliveryTopic names the delivery topics: each realtime instance has
	// its own, "<DeliveryTopic>.<instance>", with one subscription of the
	// same id (see DeliveryTopicID). Under LegacySharedDelivery it is also
	// the shared topic of the earlier layout. Default "routing-delivery".
	DeliveryTopic string
	// DeliverySubscriptionPrefix names each instance's subscription on the
	// shared DeliveryTopic in the earlier layout, "<prefix><instance>",
	// filtered on the instance attribute (LegacySharedDelivery only).
	// Default "routing-delivery-".
	DeliverySubscriptionPrefix string
	// DeliverySubscriptionExpiration deletes an instance's subscriptions
	// once they have been inactive this long (an instance that died without
	// a clean shutdown). Pub/Sub's minimum is 24h, the default.
	DeliverySubscriptionExpiration time.Duration
	// LegacySharedDelivery keeps the earlier layout working beside the
	// per-instance topics while a deployment moves over: each realtime
	// instance also creates and reads its filtered subscription on the
	// shared DeliveryTopic (where processes of the earlier layout publish),
	// and a publish to an instance that has no topic of its own (a process
	// of the earlier layout) goes to the shared topic when that instance's
	// filtered subscription exists. Off: only per-instance topics.
	LegacySharedDelivery bool

	// IngressDeadLetterTopic receives ingress messages whose delivery
	// attempts ran out or that failed permanently. Default "routing-ingress-dlq".
	IngressDeadLetterTopic string
	// DeliveryDeadLetterTopic is the same for delivery events.
	// Default "routing-delivery-dlq".
	DeliveryDeadLetterTopic string
	// MaxDeliveryAttempts is the subscriptions' dead-letter policy: after
	// that many deliveries Pub/Sub moves a message to the dead-letter topic
	// by itself (the portable bus does it on the last failed attempt; this
	// catches messages never settled). 5 to 100 (Pub/Sub's range). Default 5.
	MaxDeliveryAttempts int

	// AckDeadline is the subscriptions' ack deadline and the lease of every
	// message received: 10s to 600s. Default 30s. The client extends the
	// lease by AckDeadline while a message is unsettled, so the messages
	// of a receiver that dies are delivered again at most AckDeadline
	// after it died.
	AckDeadline time.Duration
	// MinBackoff and MaxBackoff bound Pub/Sub's redelivery backoff after a
	// nack: 0 to 600s. Defaults 1s and 60s.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// MaxOutstanding is the flow-control limit of each subscription: how
	// many received messages may be unsettled at once. Default 1000.
	MaxOutstanding int
	// Streams is how many StreamingPull streams each receiver opens. One
	// stream carries several MB/s on Pub/Sub; the emulator delivers about
	// 100 messages/s per stream. Default 1.
	Streams int

	// PublishDelay is how long a publisher waits to batch messages before it
	// sends them. Every publish waits for Pub/Sub's answer, so this is added
	// to its latency. Default 1ms.
	PublishDelay time.Duration

	// IngressPublishTimeout bounds how long the client tries to publish an
	// ingress message, retries included. A failed ingress publish returns
	// only once the client has given it up, so a publish that returned an
	// error is never sent later. Default 5s.
	IngressPublishTimeout time.Duration

	// DeadLetterScanLimit bounds how many dead messages one dead-letter
	// operation (list, get, replay, purge) reads from a queue. Default 10000.
	DeadLetterScanLimit int
	// DeadLetterPullWait is how long one pull of a dead-letter queue waits
	// for messages before the queue is taken as fully read. Default 1s.
	DeadLetterPullWait time.Duration

	// Logger receives the bus's structured logs (never message bodies).
	// Default slog.Default().
	Logger *slog.Logger
}

// Resource ids: a letter first, then letters, digits and - _ . ~ + %,
// 3 to 255 characters, never starting with "goog".
var resourceID = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$`)

// Instance names become part of a subscription id and of a filter: a
// conservative set of characters that needs no quoting.
var instanceName = regexp.MustCompile(`^[A-Za-z0-9._~+-]{1,200}$`)

func (c Config) withDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.IngressTopic, "routing-ingress")
	def(&c.IngressSubscription, "routing-pipeline")
	def(&c.DeliveryTopic, "routing-delivery")
	def(&c.DeliverySubscriptionPrefix, "routing-delivery-")
	def(&c.IngressDeadLetterTopic, "routing-ingress-dlq")
	def(&c.DeliveryDeadLetterTopic, "routing-delivery-dlq")
	if c.DeliverySubscriptionExpiration == 0 {
		c.DeliverySubscriptionExpiration = 24 * time.Hour
	}
	if c.MaxDeliveryAttempts == 0 {
		c.MaxDeliveryAttempts = 5
	}
	if c.AckDeadline == 0 {
		c.AckDeadline = 30 * time.Second
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 60 * time.Second
	}
	if c.MaxOutstanding == 0 {
		c.MaxOutstanding = 1000
	}
	if c.Streams == 0 {
		c.Streams = 1
	}
	if c.PublishDelay == 0 {
		c.PublishDelay = time.Millisecond
	}
	if c.IngressPublishTimeout == 0 {
		c.IngressPublishTimeout = 5 * time.Second
	}
	if c.DeadLetterScanLimit == 0 {
		c.DeadLetterScanLimit = 10000
	}
	if c.DeadLetterPullWait == 0 {
		c.DeadLetterPullWait = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("gcppubsub config %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.ProjectID == "" {
		bad("ProjectID", "is required")
	}
	ids := []struct{ field, id string }{
		{"IngressTopic", c.IngressTopic},
		{"IngressSubscription", c.IngressSubscription},
		{"DeliveryTopic", c.DeliveryTopic},
		{"IngressDeadLetterTopic", c.IngressDeadLetterTopic},
		{"DeliveryDeadLetterTopic", c.DeliveryDeadLetterTopic},
		{"IngressDeadLetterTopic hold subscription", holdSubscriptionID(c.IngressDeadLetterTopic)},
		{"DeliveryDeadLetterTopic hold subscription", holdSubscriptionID(c.DeliveryDeadLetterTopic)},
	}
	for _, r := range ids {
		if !validResourceID(r.id) {
			bad(r.field, "%q is not a valid Pub/Sub resource id (a letter, then 2-254 of [A-Za-z0-9._~+%%-], not starting with goog)", r.id)
		}
	}
	if c.IngressDeadLetterTopic == c.IngressTopic || c.DeliveryDeadLetterTopic == c.DeliveryTopic ||
		c.IngressTopic == c.DeliveryTopic || c.IngressDeadLetterTopic == c.DeliveryDeadLetterTopic {
		bad("topics", "ingress, delivery and their dead-letter topics must be four different topics")
	}
	if c.DeliverySubscriptionPrefix == "" || !resourceID.MatchString(c.DeliverySubscriptionPrefix+"abc") {
		bad("DeliverySubscriptionPrefix", "%q must start a valid subscription id", c.DeliverySubscriptionPrefix)
	}
	// Every id that starts with "<DeliveryTopic>." is an instance's topic
	// or subscription (the janitor deletes such topics): no other resource
	// may have one, and no earlier-layout subscription may be mistaken for one.
	own := deliveryTopicPrefix(c.DeliveryTopic)
	for _, r := range ids {
		if strings.HasPrefix(r.id, own) {
			bad(r.field, "%q must not start with %q, which names the instances' delivery topics", r.id, own)
		}
	}
	if strings.HasPrefix(c.DeliverySubscriptionPrefix, own) || strings.HasPrefix(own, c.DeliverySubscriptionPrefix) {
		bad("DeliverySubscriptionPrefix", "%q and the instances' delivery topic prefix %q must not start one another (their subscription ids would collide)",
			c.DeliverySubscriptionPrefix, own)
	}
	if c.DeliverySubscriptionExpiration < 24*time.Hour {
		bad("DeliverySubscriptionExpiration", "must be at least 24h (the Pub/Sub minimum), got %s", c.DeliverySubscriptionExpiration)
	}
	if c.MaxDeliveryAttempts < 5 || c.MaxDeliveryAttempts > 100 {
		bad("MaxDeliveryAttempts", "must be between 5 and 100 (the Pub/Sub range), got %d", c.MaxDeliveryAttempts)
	}
	if c.AckDeadline < 10*time.Second || c.AckDeadline > 600*time.Second || c.AckDeadline%time.Second != 0 {
		bad("AckDeadline", "must be whole seconds between 10s and 600s, got %s", c.AckDeadline)
	}
	if c.MinBackoff < 0 || c.MaxBackoff > 600*time.Second || c.MinBackoff > c.MaxBackoff {
		bad("MinBackoff/MaxBackoff", "need 0 <= MinBackoff <= MaxBackoff <= 600s, got %s and %s", c.MinBackoff, c.MaxBackoff)
	}
	if c.MaxOutstanding < 1 {
		bad("MaxOutstanding", "must be positive, got %d", c.MaxOutstanding)
	}
	if c.Streams < 1 || c.Streams > 64 {
		bad("Streams", "must be between 1 and 64, got %d", c.Streams)
	}
	if c.IngressPublishTimeout < 0 {
		bad("IngressPublishTimeout", "must not be negative, got %s", c.IngressPublishTimeout)
	}
	if c.PublishDelay < 0 {
		bad("PublishDelay", "must not be negative, got %s", c.PublishDelay)
	}
	if c.DeadLetterScanLimit < 1 {
		bad("DeadLetterScanLimit", "must be positive, got %d", c.DeadLetterScanLimit)
	}
	if c.DeadLetterPullWait < 0 {
		bad("DeadLetterPullWait", "must be positive, got %s", c.DeadLetterPullWait)
	}
	return errors.Join(errs...)
}

func validResourceID(id string) bool {
	return resourceID.MatchString(id) && !strings.HasPrefix(strings.ToLower(id), "goog")
}

// holdSubscriptionID names the subscription that keeps a dead-letter
// topic's messages until they are replayed or purged.
func holdSubscriptionID(deadLetterTopic string) string {
	return deadLetterTopic + "-hold"
}
