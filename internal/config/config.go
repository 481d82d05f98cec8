// Package config turns config.yaml and the environment into a validated
// Config. Every key has a default: with no file at all the service runs on the
// embedded default (embedded NATS, SQLite, in-process presence).
//
// Secrets never come from the file: JWT_SECRET, DATABASE_URL, REDIS_PASSWORD
// and credentials files named by path are read from the environment. In
// local mode without JWT_SECRET, the HS256 secret is a random one generated
// into the data dir on first start (see LoadLocalSecret).
package config

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Run modes.
const (
	ModeLocal      = "local"
	ModeProduction = "production"
)

// Roles an instance can run.
const (
	RoleAPI      = "api"
	RolePipeline = "pipeline"
	RoleRealtime = "realtime"
)

// LocalSecretFile is the file under the data dir holding the HS256 secret
// generated in local mode when JWT_SECRET is unset.
const LocalSecretFile = "jwt_secret"

// Config is the whole configuration.
type Config struct {
	RunMode string `yaml:"run_mode"`
	// SingleNode allows the embedded engines (NATS in process, SQLite,
	// in-process presence) in production mode, for a deployment of one
	// instance on one machine; every other production check stays.
	SingleNode bool `yaml:"single_node"`
	// InsecureLinks lets production mode accept links to NATS, Redis and
	// PostgreSQL without TLS or credentials, for a private network that
	// only the instances and the engines reach (a compose network); the
	// log warns at start. Every other production check holds.
	InsecureLinks   bool          `yaml:"insecure_links"`
	InstanceID      string        `yaml:"instance_id"`
	Roles           []string      `yaml:"roles"`
	DataDir         string        `yaml:"data_dir"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`

	Log       Log       `yaml:"log"`
	API       API       `yaml:"api"`
	Realtime  Realtime  `yaml:"realtime"`
	Auth      Auth      `yaml:"auth"`
	Bus       Bus       `yaml:"bus"`
	Store     Store     `yaml:"store"`
	Presence  Presence  `yaml:"presence"`
	Pipeline  Pipeline  `yaml:"pipeline"`
	Push      Push      `yaml:"push"`
	Telemetry Telemetry `yaml:"telemetry"`
	Admin     Admin     `yaml:"admin"`
	Ops       Ops       `yaml:"ops"`
	Demo      Demo      `yaml:"demo"`

	// From the environment, never from the file.
	JWTSecret     string `yaml:"-"`
	DatabaseURL   string `yaml:"-"`
	RedisPassword string `yaml:"-"`
	// LocalSecret is true when JWTSecret is the secret generated into the
	// data dir (local mode without JWT_SECRET; see LoadLocalSecret).
	LocalSecret bool `yaml:"-"`
}

// Ops configures the operations listener: /healthz, /readyz and /metrics,
// served without a token and never on the API or WebSocket port.
type Ops struct {
	// Listen is the listener's address; keep it off the public network
	// (loopback by default, the pod network for probes and scraping).
	Listen string `yaml:"listen"`
	// CheckTimeout bounds each backend check of /readyz.
	CheckTimeout time.Duration `yaml:"check_timeout"`
	// Pprof serves Go's runtime profiles (CPU, heap, goroutines, execution
	// trace) under /debug/pprof/ on this listener. Off by default; in
	// production only on a loopback listen address, since a profile names
	// the code's internals and a CPU profile or trace costs CPU while it runs.
	Pprof bool `yaml:"pprof"`
}

// Demo configures the browser demo at /demo/ and its token endpoint, POST
// /demo/token, which signs a development token for any URN it is given.
// It is served in local mode only, on a loopback api.listen, by an
// instance that runs the api and realtime roles with HS256; while it is on,
// the API answers only requests whose Host is a loopback name or one of
// realtime.allowed_hosts, so that a DNS-rebound name cannot reach it.
type Demo struct {
	// Enabled serves the demo (also `serve --demo`). Off by default.
	Enabled bool `yaml:"enabled"`
}

// Log configures structured logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// API configures the HTTP API role.
type API struct {
	Listen             string        `yaml:"listen"`
	MaxBodyBytes       int64         `yaml:"max_body_bytes"`
	MaxPayloadBytes    int           `yaml:"max_payload_bytes"`
	IdempotencyWindow  time.Duration `yaml:"idempotency_window"`
	CORSAllowedOrigins []string      `yaml:"cors_allowed_origins"`
	// RateLimit is each user's average requests per second on /v1 (0: no
	// limit); RateBurst the requests allowed at once.
	RateLimit      float64       `yaml:"rate_limit"`
	RateBurst      int           `yaml:"rate_burst"`
	ReadTimeout    time.Duration `yaml:"read_timeout"`
	WriteTimeout   time.Duration `yaml:"write_timeout"`
	PublishTimeout time.Duration `yaml:"publish_timeout"`
	// MaxIngressBacklog is how many accepted messages may wait for the
	// pipeline before sends are refused (503, Retry-After) until it catches
	// up; 0: no limit. Read from engines that report it (NATS).
	MaxIngressBacklog int64 `yaml:"max_ingress_backlog"`
	// MaxPageBytes bounds the payload bytes of one page of GET
	// /v1/messages: the page ends early, with a cursor, before the message
	// that would pass it (a page holds at least one message).
	MaxPageBytes int `yaml:"max_page_bytes"`
	// MaxFetchesPerUser bounds the GET /v1/messages requests one user has
	// in progress on an instance at once; more answer 429 rate_limited.
	MaxFetchesPerUser int `yaml:"max_fetches_per_user"`
	// MaxBatch bounds the messages of one POST /v1/messages/batch, and
	// MaxBatchBodyBytes its body (MaxBodyBytes bounds every other body);
	// over either: 413.
	MaxBatch          int   `yaml:"max_batch"`
	MaxBatchBodyBytes int64 `yaml:"max_batch_body_bytes"`
}

// Realtime configures the WebSocket role.
type Realtime struct {
	// Listen is the WebSocket listener's address; empty serves
	// /v1/connect on the API listener instead (one port, for a single
	// load-balancer port; the instance needs the api role too).
	Listen          string        `yaml:"listen"`
	AllowedOrigins  []string      `yaml:"allowed_origins"`
	MaxFrameBytes   int64         `yaml:"max_frame_bytes"`
	PingInterval    time.Duration `yaml:"ping_interval"`
	PongTimeout     time.Duration `yaml:"pong_timeout"`
	WriteTimeout    time.Duration `yaml:"write_timeout"`
	SendQueue       int           `yaml:"send_queue"`
	SendBufferBytes int64         `yaml:"send_buffer_bytes"`
	BacklogPage     int           `yaml:"backlog_page"`
	MaxConnsPerUser int           `yaml:"max_conns_per_user"`
	// DeliveryConcurrency is the number of handlers of this instance's
	// delivery subscription (0: pipeline.concurrency, which sized them
	// before this key).
	DeliveryConcurrency int `yaml:"delivery_concurrency"`
	// MaxSendsInFlight bounds the send frames of one connection not
	// answered yet: past it the server reads nothing more from the
	// connection until it has answered some (backpressure).
	MaxSendsInFlight int `yaml:"max_sends_in_flight"`
	// AllowedHosts are the host names (no port) a browser may reach the
	// WebSocket endpoint by: an upgrade with an Origin header and another
	// Host is refused, so a DNS-rebound name cannot pass as same-origin.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// MaxConns caps this instance's connections; MaxConnsPerIP those of
	// one client address (0, the default: no per-address cap, since
	// carrier-grade NAT puts thousands of people behind one address).
	MaxConns      int `yaml:"max_conns"`
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
	// Connection attempts per second (average) and at once: per client
	// address those without a valid token (none, or one that fails
	// verification), per user those with one; over them: 429 with
	// Retry-After (a token that fails verification still gets 401). An
	// attempt with a valid token never spends its address's budget.
	ConnectRatePerIP    float64 `yaml:"connect_rate_per_ip"`
	ConnectBurstPerIP   int     `yaml:"connect_burst_per_ip"`
	ConnectRatePerUser  float64 `yaml:"connect_rate_per_user"`
	ConnectBurstPerUser int     `yaml:"connect_burst_per_user"`
	// Ack frames per second (average) and at once, per connection; over
	// them the frame is answered with a rate_limited error and not applied.
	AckRate  float64 `yaml:"ack_rate"`
	AckBurst int     `yaml:"ack_burst"`
	// TrustedProxies are the networks (CIDR) of load balancers whose
	// X-Forwarded-For names the client address; other peers are taken as
	// the client. Alone, the client is the first entry from the right
	// outside these networks.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// TrustedProxyHops is how many X-Forwarded-For entries, counted from
	// the right, the load balancers in front write (2 behind Google's
	// external Application Load Balancer, 1 behind nginx or an AWS ALB, 0
	// for direct connections): the client is the entry that many from the
	// right. With TrustedProxies too, only those peers' header is read.
	TrustedProxyHops  int           `yaml:"trusted_proxy_hops"`
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
}

// Auth configures token verification.
type Auth struct {
	// Algorithms accepted; HS256 uses JWT_SECRET, the others keys from JWKSURL.
	Algorithms  []string      `yaml:"algorithms"`
	JWKSURL     string        `yaml:"jwks_url"`
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	Issuer      string        `yaml:"issuer"`
	Audience    string        `yaml:"audience"`
	Leeway      time.Duration `yaml:"leeway"`
	// MaxTokenAge, when set, refuses tokens issued (iat) longer ago than
	// this, and tokens without iat; 0: no limit beyond exp.
	MaxTokenAge time.Duration `yaml:"max_token_age"`
}

// Bus configures the message bus.
type Bus struct {
	// Type is embedded (NATS JetStream in process), nats (external cluster) or pubsub.
	Type                    string        `yaml:"type"`
	IngressTopic            string        `yaml:"ingress_topic"`
	IngressSubscription     string        `yaml:"ingress_subscription"`
	DeliveryTopic           string        `yaml:"delivery_topic"`
	MaxDeliveryAttempts     int           `yaml:"max_delivery_attempts"`
	AckDeadline             time.Duration `yaml:"ack_deadline"`
	MinBackoff              time.Duration `yaml:"min_backoff"`
	MaxBackoff              time.Duration `yaml:"max_backoff"`
	MaxOutstanding          int           `yaml:"max_outstanding"`
	IngressDeadLetterTopic  string        `yaml:"ingress_dead_letter_topic"`
	DeliveryDeadLetterTopic string        `yaml:"delivery_dead_letter_topic"`
	// PackDeliveries sends the delivery events that one pipeline batch
	// addresses to one realtime instance as one bus message: one engine
	// write, delivery and ack for many events. Unset: on for NATS (embedded
	// and external), off for Pub/Sub, where a pack's ordering key carries
	// every event from one pipeline to one instance and Pub/Sub caps one
	// ordering key at 1 MB/s. Realtime instances read packs whatever it says.
	PackDeliveries *bool  `yaml:"pack_deliveries"`
	NATS           NATS   `yaml:"nats"`
	PubSub         PubSub `yaml:"pubsub"`
}

// Packing reports whether delivery events are packed (see PackDeliveries).
func (b Bus) Packing() bool {
	if b.PackDeliveries != nil {
		return *b.PackDeliveries
	}
	return b.Type != "pubsub"
}

// NATS configures the embedded server and the external cluster client.
type NATS struct {
	// URL of an external cluster (type nats).
	URL string `yaml:"url"`
	// SubjectPrefix is the first token of every subject the service uses.
	SubjectPrefix string `yaml:"subject_prefix"`
	// Sync is the embedded server's fsync policy: "always" (every write is
	// fsynced before the publish is acknowledged) or a duration such as
	// "1s" (fsync at that interval). The store, not the bus, is where an
	// accepted message is durable: this only bounds how many routing
	// events a power loss can take (the sweep of unrouted messages routes
	// them again).
	Sync string `yaml:"sync"`
	// Replicas of each stream (external cluster).
	Replicas int `yaml:"replicas"`
	// DuplicateWindow within which a repeated message id is stored once.
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
	// MaxAge of messages kept in the streams.
	MaxAge time.Duration `yaml:"max_age"`
	// CredentialsFile for the external cluster (optional).
	CredentialsFile string `yaml:"credentials_file"`
}

// PubSub configures Google Cloud Pub/Sub.
type PubSub struct {
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

// Store configures the durable store.
type Store struct {
	// Type is sqlite or postgres (DATABASE_URL from the environment).
	Type       string `yaml:"type"`
	SQLitePath string `yaml:"sqlite_path"`
	// PostgresSchema holds the tables (created if missing).
	PostgresSchema string        `yaml:"postgres_schema"`
	Retention      time.Duration `yaml:"retention"`
	SweepInterval  time.Duration `yaml:"sweep_interval"`
	MaxBatch       int           `yaml:"max_batch"`
	MaxConns       int           `yaml:"max_conns"`
	// MaxPendingPerRecipient caps a recipient's pending (stored, not yet
	// acknowledged) messages: sends to a recipient at the cap are refused
	// with 429 recipient_queue_full.
	MaxPendingPerRecipient int `yaml:"max_pending_per_recipient"`
	// MaxPendingPerSender and MaxPendingBytesPerSender cap what one sender
	// has pending over all its recipients (messages; payload bytes): sends
	// past either are refused with 429 sender_quota_exceeded.
	MaxPendingPerSender      int   `yaml:"max_pending_per_sender"`
	MaxPendingBytesPerSender int64 `yaml:"max_pending_bytes_per_sender"`
	// PostgresVacuumInterval is how often the PostgreSQL store checks its
	// high-churn tables and vacuums those holding PostgresVacuumDeadRows
	// dead rows or more (0: never; autovacuum alone). One instance
	// vacuums at a time; a table autovacuum is working on is skipped.
	PostgresVacuumInterval time.Duration `yaml:"postgres_vacuum_interval"`
	PostgresVacuumDeadRows int64         `yaml:"postgres_vacuum_dead_rows"`
}

// Presence configures the presence registry.
type Presence struct {
	// Type is memory or redis.
	Type      string        `yaml:"type"`
	TTL       time.Duration `yaml:"ttl"`
	Heartbeat time.Duration `yaml:"heartbeat"`
	Redis     Redis         `yaml:"redis"`
}

// Redis configures the Redis client (REDIS_PASSWORD from the environment).
type Redis struct {
	Addr      string `yaml:"addr"`
	DB        int    `yaml:"db"`
	KeyPrefix string `yaml:"key_prefix"`
	TLS       bool   `yaml:"tls"`
}

// Pipeline configures the ingress consumer.
type Pipeline struct {
	// Concurrency is the number of handlers of the ingress consumer (and
	// of the delivery subscription unless realtime.delivery_concurrency
	// is set).
	Concurrency    int           `yaml:"concurrency"`
	HandlerTimeout time.Duration `yaml:"handler_timeout"`
	// RerouteAfter is how long a stored message may wait for its routing
	// event before the sweep of unrouted messages routes it.
	RerouteAfter time.Duration `yaml:"reroute_after"`
	// LocalHandoff routes the messages this instance's API stored in
	// process when the instance runs the pipeline too, rather than over the
	// ingress topic (which still carries what the hand-off cannot take).
	LocalHandoff bool `yaml:"local_handoff"`
}

// Push configures push notifications.
type Push struct {
	CoalesceWindow    time.Duration `yaml:"coalesce_window"`
	Concurrency       int           `yaml:"concurrency"`
	Timeout           time.Duration `yaml:"timeout"`
	MaxRetries        int           `yaml:"max_retries"`
	MaxTargetsPerUser int           `yaml:"max_targets_per_user"`
	// UnackedAfter is how long a message routed to a live connection may
	// stay unacknowledged before its recipient gets a push anyway (0: never).
	UnackedAfter time.Duration `yaml:"unacked_after"`
	// AllowedPorts are the ports push egress may connect to on public
	// addresses (default [443]); every other port is refused when the
	// connection is made. APNs's alternative port is 2197. Loopback
	// stand-ins (push.webpush.allow_local_endpoints) take any port.
	AllowedPorts []int `yaml:"allowed_ports"`
	// CAFile is a PEM bundle of extra root certificates trusted when
	// talking to push providers (besides the system roots).
	CAFile  string  `yaml:"ca_file"`
	FCM     FCM     `yaml:"fcm"`
	APNs    APNs    `yaml:"apns"`
	WebPush WebPush `yaml:"webpush"`
}

// FCM configures Firebase Cloud Messaging (HTTP v1).
type FCM struct {
	Enabled         bool   `yaml:"enabled"`
	ProjectID       string `yaml:"project_id"`
	CredentialsFile string `yaml:"credentials_file"`
	Endpoint        string `yaml:"endpoint"`
	TokenURL        string `yaml:"token_url"`
}

// APNs configures Apple Push Notification service.
type APNs struct {
	Enabled  bool   `yaml:"enabled"`
	KeyFile  string `yaml:"key_file"`
	KeyID    string `yaml:"key_id"`
	TeamID   string `yaml:"team_id"`
	Topic    string `yaml:"topic"`
	Endpoint string `yaml:"endpoint"`
	PushType string `yaml:"push_type"`
	Priority int    `yaml:"priority"`
}

// WebPush configures Web Push (VAPID).
type WebPush struct {
	Enabled bool   `yaml:"enabled"`
	Subject string `yaml:"subject"`
	// VAPID keys (base64url); in local mode, generated into the data dir when empty.
	VAPIDPublicKey      string        `yaml:"vapid_public_key"`
	VAPIDPrivateKeyFile string        `yaml:"vapid_private_key_file"`
	TTL                 time.Duration `yaml:"ttl"`
	Urgency             string        `yaml:"urgency"`
	// AllowLocalEndpoints accepts subscriptions whose endpoint is on
	// localhost or a loopback address, and lets push egress (Web Push, FCM
	// and APNs alike) connect to loopback addresses: for local setups with
	// stand-in push services only; refused in production. Every other
	// address that is not public unicast is refused either way.
	AllowLocalEndpoints bool `yaml:"allow_local_endpoints"`
}

// Telemetry configures metrics and traces.
type Telemetry struct {
	// Traces is off or otlp (spans exported over OTLP, configured by the
	// standard OTEL_* environment variables).
	Traces string `yaml:"traces"`
	// OTLPEndpoint is the collector's URL when neither
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT nor OTEL_EXPORTER_OTLP_ENDPOINT
	// is set.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// SampleRatio is the ratio of traces sampled when OTEL_TRACES_SAMPLER
	// is not set: new traces, and requests carrying a caller's traceparent
	// unless TrustRemoteSampling is set. Spans under a parent this service
	// made (across the bus too) follow their parent's decision.
	SampleRatio float64 `yaml:"sample_ratio"`
	// TrustRemoteSampling follows the sampled flag of a caller's
	// traceparent. Off (the default), a client cannot make the service
	// trace its requests; turn it on only when every caller is trusted.
	TrustRemoteSampling bool `yaml:"trust_remote_sampling"`
}

// Admin configures the admin endpoint: an HTTP server on a Unix domain
// socket (file mode 0600) through which `routingservice dlq` inspects,
// replays and purges the dead-letter queues of the running service.
type Admin struct {
	// Socket is the socket's path: "" means <data_dir>/admin.sock, "-"
	// disables the admin endpoint.
	Socket string `yaml:"socket"`
}

// AdminSocket is the admin socket's path ("" when disabled).
func (c *Config) AdminSocket() string {
	switch c.Admin.Socket {
	case "-":
		return ""
	case "":
		return filepath.Join(c.DataDir, "admin.sock")
	}
	return c.Admin.Socket
}

// Default returns the embedded-default configuration.
func Default() Config {
	return Config{
		RunMode:         ModeLocal,
		Roles:           []string{RoleAPI, RolePipeline, RoleRealtime},
		DataDir:         "./data",
		ShutdownTimeout: 15 * time.Second,
		Log:             Log{Level: "info", Format: "text"},
		API: API{
			Listen:             "127.0.0.1:8082",
			MaxBodyBytes:       128 << 10,
			MaxPayloadBytes:    64 << 10,
			IdempotencyWindow:  24 * time.Hour,
			CORSAllowedOrigins: []string{},
			RateLimit:          100,
			RateBurst:          200,
			ReadTimeout:        10 * time.Second,
			WriteTimeout:       10 * time.Second,
			PublishTimeout:     5 * time.Second,
			MaxIngressBacklog:  50000,
			MaxPageBytes:       1 << 20,
			MaxFetchesPerUser:  2,
			MaxBatch:           1000,
			MaxBatchBodyBytes:  16 << 20,
		},
		Realtime: Realtime{
			Listen:          "127.0.0.1:8085",
			AllowedOrigins:  []string{},
			MaxFrameBytes:   128 << 10,
			PingInterval:    25 * time.Second,
			PongTimeout:     10 * time.Second,
			WriteTimeout:    10 * time.Second,
			SendQueue:       1024,
			SendBufferBytes: 1 << 20,
			BacklogPage:     100,
			MaxConnsPerUser: 16,
			AllowedHosts:    []string{"localhost", "127.0.0.1", "::1"},

			MaxSendsInFlight: 64,

			MaxConns:            10000,
			MaxConnsPerIP:       0,
			ConnectRatePerIP:    10,
			ConnectBurstPerIP:   50,
			ConnectRatePerUser:  1,
			ConnectBurstPerUser: 20,
			AckRate:             50,
			AckBurst:            100,
			TrustedProxies:      []string{},
			ReadHeaderTimeout:   10 * time.Second,
			IdleTimeout:         2 * time.Minute,
		},
		Auth: Auth{
			Algorithms:  []string{"HS256"},
			JWKSRefresh: time.Hour,
			Leeway:      30 * time.Second,
		},
		Bus: Bus{
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
			NATS: NATS{
				Sync:            "1s",
				SubjectPrefix:   "routing",
				Replicas:        1,
				DuplicateWindow: 2 * time.Minute,
				MaxAge:          7 * 24 * time.Hour,
			},
			PubSub: PubSub{
				DeliverySubscriptionPrefix:     "routing-delivery-",
				DeliverySubscriptionExpiration: 24 * time.Hour,
				DeliveryTopicTTL:               48 * time.Hour,
				LegacySharedDelivery:           true,
			},
		},
		Store: Store{
			Type:           "sqlite",
			PostgresSchema: "public",
			Retention:      30 * 24 * time.Hour,
			SweepInterval:  time.Hour,
			MaxBatch:       256,
			MaxConns:       16,

			MaxPendingPerRecipient:   10000,
			MaxPendingPerSender:      100000,
			MaxPendingBytesPerSender: 1 << 30,
			PostgresVacuumInterval:   5 * time.Second,
			PostgresVacuumDeadRows:   5000,
		},
		Presence: Presence{
			Type:      "memory",
			TTL:       60 * time.Second,
			Heartbeat: 20 * time.Second,
			Redis:     Redis{Addr: "127.0.0.1:6379", KeyPrefix: "routing:"},
		},
		Pipeline: Pipeline{Concurrency: 64, HandlerTimeout: 10 * time.Second, RerouteAfter: 30 * time.Second, LocalHandoff: true},
		Push: Push{
			CoalesceWindow:    5 * time.Second,
			Concurrency:       16,
			Timeout:           10 * time.Second,
			MaxRetries:        3,
			MaxTargetsPerUser: 10,
			UnackedAfter:      30 * time.Second,
			AllowedPorts:      []int{443},
			APNs:              APNs{Endpoint: "https://api.push.apple.com", PushType: "background", Priority: 5},
			WebPush:           WebPush{Enabled: true, Subject: "mailto:ops@example.com", TTL: 24 * time.Hour, Urgency: "high"},
			FCM:               FCM{Endpoint: "https://fcm.googleapis.com"},
		},
		Telemetry: Telemetry{Traces: "off", SampleRatio: 1},
		Ops:       Ops{Listen: "127.0.0.1:9090", CheckTimeout: time.Second},
	}
}

// Load reads the file at path ("" for none) over the defaults, applies the
// environment and then each override (a command's flags), fills the
// derived defaults and validates the result.
func Load(path string, overrides ...func(*Config)) (Config, error) {
	cfg, err := LoadUnchecked(path, overrides...)
	if err != nil {
		return Config{}, err
	}
	if err := cfg.Check(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// LoadUnchecked is Load without Check: the configuration as read, with its
// derived defaults, for a caller that reports every problem at once (the
// key checks, and its own checks of the files it names). It fails only
// when the file cannot be read or parsed, or the local secret made.
func LoadUnchecked(path string, overrides ...func(*Config)) (Config, error) {
	cfg := Default()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		if err := Parse(b, &cfg); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
	}
	cfg.FromEnv(os.Getenv)
	for _, o := range overrides {
		o(&cfg)
	}
	cfg.FillDefaults()
	if err := cfg.LoadLocalSecret(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Parse decodes YAML over cfg. Unknown keys are errors.
func Parse(b []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, errEOF()) {
		return err
	}
	return nil
}

func errEOF() error { return io.EOF }

// FromEnv reads the secrets from the environment, and the overrides of
// instance_id (ROUTING_INSTANCE_ID), data_dir (ROUTING_DATA_DIR) and roles
// (ROUTING_ROLES, comma-separated) when they are set.
func (c *Config) FromEnv(getenv func(string) string) {
	c.JWTSecret = getenv("JWT_SECRET")
	c.DatabaseURL = getenv("DATABASE_URL")
	c.RedisPassword = getenv("REDIS_PASSWORD")
	if v := getenv("ROUTING_INSTANCE_ID"); v != "" {
		c.InstanceID = v
	}
	if v := getenv("ROUTING_DATA_DIR"); v != "" {
		c.DataDir = v
	}
	if v := getenv("ROUTING_ROLES"); v != "" {
		c.Roles = splitList(v)
	}
}

// splitList splits a comma-separated list, trimming blanks and dropping
// empty entries.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Has reports whether the instance runs role.
func (c *Config) Has(role string) bool { return slices.Contains(c.Roles, role) }

// FillDefaults fills the defaults that derive from other keys or from the
// machine, where they are unset: the instance id (host name and a random
// suffix) and the SQLite path (under the data dir). It leaves set values
// alone, so calling it again changes nothing. Call it after FromEnv and
// before Check.
func (c *Config) FillDefaults() {
	if c.InstanceID == "" {
		c.InstanceID = defaultInstanceID()
	}
	if c.Store.Type == "sqlite" && c.Store.SQLitePath == "" {
		c.Store.SQLitePath = filepath.Join(c.DataDir, "routing.db")
	}
	if c.Bus.PackDeliveries == nil {
		pack := c.Bus.Packing()
		c.Bus.PackDeliveries = &pack
	}
}

// LoadLocalSecret gives local mode with HS256 and no JWT_SECRET its secret:
// <data_dir>/jwt_secret, made on first use from 32 random bytes (file mode
// 0600, refused when others may read it). The service and `routingservice
// token` resolve the data dir alike, so they share it. Elsewhere it does
// nothing.
func (c *Config) LoadLocalSecret() error {
	if c.JWTSecret != "" || c.RunMode != ModeLocal || !slices.Contains(c.Auth.Algorithms, "HS256") || c.DataDir == "" {
		return nil
	}
	secret, err := loadOrCreateSecret(filepath.Join(c.DataDir, LocalSecretFile))
	if err != nil {
		return &KeyError{Key: "data_dir", Msg: "local JWT secret", Err: err}
	}
	c.JWTSecret, c.LocalSecret = secret, true
	return nil
}

// ExistingLocalSecret returns the secret an earlier start generated into
// dataDir, without making one.
func ExistingLocalSecret(dataDir string) (string, error) {
	return readSecret(filepath.Join(dataDir, LocalSecretFile))
}

func loadOrCreateSecret(path string) (string, error) {
	if s, err := readSecret(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return s, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	// Written whole under a temporary name, then linked into place: a
	// concurrent first start either wins or reads the winner's secret.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".jwt_secret-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(hex.EncodeToString(b[:]) + "\n")
	if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
		return "", err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	return readSecret(path)
}

func readSecret(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %v); chmod 600 it", path, st.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if len(s) < 32 {
		return "", fmt.Errorf("%s holds fewer than 32 characters", path)
	}
	return s, nil
}

// Check reports every invalid key of c at once. The error is an Errors,
// one *KeyError a problem naming its key (callers that use only some keys
// keep those with Errors.Under). It changes nothing: the derived defaults
// must be filled already (see FillDefaults), and an unset one is an error.
func (c Config) Check() error {
	var errs Errors
	bad := func(key, format string, args ...any) {
		errs = append(errs, &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	prod := c.RunMode == ModeProduction
	if c.RunMode != ModeLocal && !prod {
		bad("run_mode", "must be %q or %q, got %q", ModeLocal, ModeProduction, c.RunMode)
	}
	if len(c.Roles) == 0 {
		bad("roles", "must name at least one of api, pipeline, realtime")
	}
	for _, r := range c.Roles {
		if r != RoleAPI && r != RolePipeline && r != RoleRealtime {
			bad("roles", "unknown role %q (api, pipeline, realtime)", r)
		}
	}
	if !validName(c.InstanceID) {
		bad("instance_id", "must be 1-64 characters of [A-Za-z0-9_-], got %q", c.InstanceID)
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown_timeout", "must be positive")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", "must be text or json, got %q", c.Log.Format)
	}
	if c.API.MaxBodyBytes < 1024 {
		bad("api.max_body_bytes", "must be at least 1024")
	}
	if c.API.MaxPayloadBytes < 1 || int64(c.API.MaxPayloadBytes) > c.API.MaxBodyBytes {
		bad("api.max_payload_bytes", "must be between 1 and api.max_body_bytes")
	}
	if c.API.RateLimit < 0 {
		bad("api.rate_limit", "must not be negative (0 turns the limit off)")
	}
	if c.API.MaxIngressBacklog < 0 {
		bad("api.max_ingress_backlog", "must not be negative (0: no limit)")
	}
	if c.API.MaxPageBytes < 1 {
		bad("api.max_page_bytes", "must be at least 1 (a page holds at least one message whatever its size)")
	}
	if c.API.MaxFetchesPerUser < 1 {
		bad("api.max_fetches_per_user", "must be at least 1")
	}
	if c.API.MaxBatch < 1 {
		bad("api.max_batch", "must be at least 1")
	}
	if c.API.MaxBatchBodyBytes < c.API.MaxBodyBytes {
		bad("api.max_batch_body_bytes", "must be at least api.max_body_bytes (%d): a batch of one message is as large as a send", c.API.MaxBodyBytes)
	}
	if c.Store.MaxPendingPerSender < 1 {
		bad("store.max_pending_per_sender", "must be at least 1")
	}
	if c.Store.MaxPendingBytesPerSender < int64(c.API.MaxPayloadBytes) {
		bad("store.max_pending_bytes_per_sender", "must be at least api.max_payload_bytes (%d), or no message of that size could be sent", c.API.MaxPayloadBytes)
	}
	if c.API.RateLimit > 0 && c.API.RateBurst < 1 {
		bad("api.rate_burst", "must be at least 1")
	}
	if c.API.IdempotencyWindow <= 0 {
		bad("api.idempotency_window", "must be positive")
	}
	if c.Push.UnackedAfter < 0 {
		bad("push.unacked_after", "must not be negative (0 turns it off)")
	}
	positive := map[string]time.Duration{
		"api.read_timeout": c.API.ReadTimeout, "api.write_timeout": c.API.WriteTimeout,
		"api.publish_timeout": c.API.PublishTimeout, "realtime.ping_interval": c.Realtime.PingInterval,
		"realtime.pong_timeout": c.Realtime.PongTimeout, "realtime.write_timeout": c.Realtime.WriteTimeout,
		"bus.ack_deadline": c.Bus.AckDeadline, "bus.min_backoff": c.Bus.MinBackoff, "bus.max_backoff": c.Bus.MaxBackoff,
		"store.retention": c.Store.Retention, "store.sweep_interval": c.Store.SweepInterval,
		"presence.ttl": c.Presence.TTL, "presence.heartbeat": c.Presence.Heartbeat,
		"pipeline.handler_timeout": c.Pipeline.HandlerTimeout, "push.timeout": c.Push.Timeout,
		"pipeline.reroute_after": c.Pipeline.RerouteAfter,
		"push.coalesce_window":   c.Push.CoalesceWindow,
	}
	for k, v := range positive {
		if v <= 0 {
			bad(k, "must be a positive duration")
		}
	}
	if c.Presence.Heartbeat >= c.Presence.TTL {
		bad("presence.heartbeat", "must be shorter than presence.ttl")
	}
	if c.Bus.MaxBackoff < c.Bus.MinBackoff {
		bad("bus.max_backoff", "must not be shorter than bus.min_backoff")
	}
	if c.Realtime.MaxFrameBytes < 1024 {
		bad("realtime.max_frame_bytes", "must be at least 1024")
	}
	ints := map[string]int{
		"realtime.send_queue": c.Realtime.SendQueue, "realtime.backlog_page": c.Realtime.BacklogPage,
		"realtime.max_conns_per_user":  c.Realtime.MaxConnsPerUser,
		"realtime.max_sends_in_flight": c.Realtime.MaxSendsInFlight,
		"bus.max_outstanding":          c.Bus.MaxOutstanding, "store.max_batch": c.Store.MaxBatch,
		"store.max_conns": c.Store.MaxConns, "pipeline.concurrency": c.Pipeline.Concurrency,
		"store.max_pending_per_recipient": c.Store.MaxPendingPerRecipient,
		"push.concurrency":                c.Push.Concurrency, "push.max_targets_per_user": c.Push.MaxTargetsPerUser,
	}
	for k, v := range ints {
		if v < 1 {
			bad(k, "must be at least 1")
		}
	}
	if c.Realtime.BacklogPage > 500 {
		bad("realtime.backlog_page", "must be at most 500")
	}
	// A connection's send buffer holds the frame of the largest message
	// being written and one more queued behind it.
	if minBuf := 2 * (4*((int64(c.API.MaxPayloadBytes)+2)/3) + 2048); c.Realtime.SendBufferBytes < minBuf {
		bad("realtime.send_buffer_bytes", "must be at least %d (two frames of a message of api.max_payload_bytes)", minBuf)
	}
	if c.Bus.MaxDeliveryAttempts < 1 || c.Bus.MaxDeliveryAttempts > 1000 {
		bad("bus.max_delivery_attempts", "must be between 1 and 1000 (Pub/Sub accepts 5 to 100)")
	}
	for k, v := range map[string]string{
		"bus.ingress_topic": c.Bus.IngressTopic, "bus.ingress_subscription": c.Bus.IngressSubscription,
		"bus.delivery_topic": c.Bus.DeliveryTopic, "bus.ingress_dead_letter_topic": c.Bus.IngressDeadLetterTopic,
		"bus.delivery_dead_letter_topic": c.Bus.DeliveryDeadLetterTopic,
	} {
		if !validName(v) {
			bad(k, "must be 1-64 characters of [A-Za-z0-9_-], got %q", v)
		}
	}
	switch c.Bus.Type {
	case "embedded":
		if prod && !c.SingleNode {
			bad("bus.type", "embedded serves one instance; production needs nats or pubsub, or single_node: true for one machine")
		}
		if c.Bus.NATS.Sync != "always" {
			if d, err := time.ParseDuration(c.Bus.NATS.Sync); err != nil || d <= 0 {
				bad("bus.nats.sync", "must be \"always\" or a positive duration, got %q", c.Bus.NATS.Sync)
			}
		}
	case "nats":
		if c.Bus.NATS.URL == "" {
			bad("bus.nats.url", "is required when bus.type is nats")
		}
	case "pubsub":
		if c.Bus.PubSub.ProjectID == "" {
			bad("bus.pubsub.project_id", "is required when bus.type is pubsub")
		}
		if c.Bus.AckDeadline < 10*time.Second || c.Bus.AckDeadline > 600*time.Second {
			bad("bus.ack_deadline", "must be between 10s and 600s for Pub/Sub")
		}
		if c.Bus.MaxBackoff > 600*time.Second {
			bad("bus.max_backoff", "must be at most 600s for Pub/Sub")
		}
		if c.Bus.PubSub.DeliverySubscriptionExpiration < 24*time.Hour {
			bad("bus.pubsub.delivery_subscription_expiration", "must be at least 24h (the Pub/Sub minimum)")
		}
		if c.Bus.PubSub.DeliveryTopicTTL < time.Hour {
			bad("bus.pubsub.delivery_topic_ttl", "must be at least 1h, got %s", c.Bus.PubSub.DeliveryTopicTTL)
		}
		// Pub/Sub ids are at most 255 characters.
		if n := len(c.Bus.DeliveryTopic) + 1 + len(c.InstanceID); n > 255 {
			bad("bus.delivery_topic", "with instance_id names the instance's delivery topic %q: %d characters, Pub/Sub allows 255",
				c.Bus.DeliveryTopic+"."+c.InstanceID, n)
		}
	default:
		bad("bus.type", "must be embedded, nats or pubsub, got %q", c.Bus.Type)
	}
	if !validName(c.Bus.NATS.SubjectPrefix) {
		bad("bus.nats.subject_prefix", "must be 1-64 characters of [A-Za-z0-9_-], got %q", c.Bus.NATS.SubjectPrefix)
	}
	if c.Store.PostgresVacuumInterval < 0 {
		bad("store.postgres_vacuum_interval", "must not be negative (0: the store never vacuums; autovacuum alone)")
	}
	if c.Store.PostgresVacuumDeadRows < 1 {
		bad("store.postgres_vacuum_dead_rows", "must be at least 1")
	}
	if !validName(c.Store.PostgresSchema) {
		bad("store.postgres_schema", "must be 1-64 characters of [A-Za-z0-9_-], got %q", c.Store.PostgresSchema)
	}
	if c.Bus.NATS.Replicas < 1 || c.Bus.NATS.Replicas > 5 {
		bad("bus.nats.replicas", "must be between 1 and 5")
	}
	if c.Bus.NATS.DuplicateWindow <= 0 {
		bad("bus.nats.duplicate_window", "must be positive")
	}
	switch c.Store.Type {
	case "sqlite":
		if prod && !c.SingleNode {
			bad("store.type", "sqlite serves one instance; production needs postgres, or single_node: true for one machine")
		}
		if c.Store.SQLitePath == "" {
			bad("store.sqlite_path", "must not be empty when store.type is sqlite")
		}
	case "postgres":
		if c.DatabaseURL == "" && prod {
			bad("store.type", "postgres needs the DATABASE_URL environment variable (in production with sslmode=require, verify-ca or verify-full)")
		} else if c.DatabaseURL == "" {
			bad("store.type", "postgres needs the DATABASE_URL environment variable")
		}
	default:
		bad("store.type", "must be sqlite or postgres, got %q", c.Store.Type)
	}
	switch c.Presence.Type {
	case "memory":
		if prod && !c.SingleNode {
			bad("presence.type", "memory serves one instance; production needs redis, or single_node: true for one machine")
		}
	case "redis":
		if c.Presence.Redis.Addr == "" {
			bad("presence.redis.addr", "is required when presence.type is redis")
		}
	default:
		bad("presence.type", "must be memory or redis, got %q", c.Presence.Type)
	}
	for i, a := range c.Auth.Algorithms {
		switch a {
		case "HS256", "RS256", "ES256", "EdDSA":
		default:
			bad(fmt.Sprintf("auth.algorithms[%d]", i), "must be HS256, RS256, ES256 or EdDSA, got %q", a)
		}
	}
	if len(c.Auth.Algorithms) == 0 {
		bad("auth.algorithms", "must name at least one algorithm")
	}
	if slices.Contains(c.Auth.Algorithms, "HS256") {
		switch {
		case c.JWTSecret == "" && prod:
			bad("auth.algorithms", "HS256 needs the JWT_SECRET environment variable in production")
		case c.JWTSecret == "":
			bad("auth.algorithms", "HS256 needs a secret: set JWT_SECRET (local mode generates one into the data dir)")
		case slices.Contains(publishedSecrets, c.JWTSecret):
			bad("auth.algorithms", "JWT_SECRET is a published secret (anyone can sign tokens with it); set a random one")
		case len(c.JWTSecret) < 32 && prod:
			bad("auth.algorithms", "JWT_SECRET must be at least 32 bytes in production")
		}
	}
	if slices.ContainsFunc(c.Auth.Algorithms, func(a string) bool { return a != "HS256" }) && c.Auth.JWKSURL == "" {
		bad("auth.jwks_url", "is required for RS256, ES256 or EdDSA")
	}
	if c.Auth.JWKSURL != "" && prod {
		if !strings.HasPrefix(c.Auth.JWKSURL, "https://") {
			bad("auth.jwks_url", "must be https in production")
		}
		// Any token the identity provider signs would do, whatever it was for.
		if c.Auth.Issuer == "" {
			bad("auth.issuer", "is required with auth.jwks_url in production")
		}
		if c.Auth.Audience == "" {
			bad("auth.audience", "is required with auth.jwks_url in production")
		}
	}
	if prod && c.API.RateLimit == 0 {
		bad("api.rate_limit", "must be positive in production (0 turns the limit off)")
	}
	if prod && !c.InsecureLinks {
		c.checkLinks(bad)
	}
	c.checkRealtime(bad)
	c.checkDemo(bad)
	if c.Ops.Listen == "" {
		bad("ops.listen", "must not be empty (it serves /healthz, /readyz and /metrics)")
	}
	if c.Ops.Pprof && prod && !LoopbackListen(c.Ops.Listen) {
		bad("ops.pprof", "needs a loopback ops.listen in production, got %q", c.Ops.Listen)
	}
	if c.Ops.CheckTimeout <= 0 || c.Ops.CheckTimeout > 30*time.Second {
		bad("ops.check_timeout", "must be between 0 and 30s")
	}
	if c.Auth.Leeway < 0 || c.Auth.Leeway > 5*time.Minute {
		bad("auth.leeway", "must be between 0 and 5m")
	}
	if c.Auth.MaxTokenAge < 0 {
		bad("auth.max_token_age", "must not be negative (0: no limit beyond exp)")
	}
	for _, o := range c.API.CORSAllowedOrigins {
		if o == "*" && prod {
			bad("api.cors_allowed_origins", "wildcard \"*\" is refused in production")
		}
	}
	if c.Push.WebPush.Enabled {
		if c.Push.WebPush.AllowLocalEndpoints && prod {
			bad("push.webpush.allow_local_endpoints", "is refused in production")
		}
		if c.Push.WebPush.VAPIDPrivateKeyFile == "" && prod {
			bad("push.webpush.vapid_private_key_file", "is required in production (local mode generates a key pair into the data dir)")
		}
		switch c.Push.WebPush.Urgency {
		case "very-low", "low", "normal", "high":
		default:
			bad("push.webpush.urgency", "must be very-low, low, normal or high, got %q", c.Push.WebPush.Urgency)
		}
		if !strings.HasPrefix(c.Push.WebPush.Subject, "mailto:") && !strings.HasPrefix(c.Push.WebPush.Subject, "https://") {
			bad("push.webpush.subject", "must be a mailto: or https: contact")
		}
	}
	if c.Push.FCM.Enabled && c.Push.FCM.CredentialsFile == "" {
		bad("push.fcm.credentials_file", "is required when push.fcm.enabled is true")
	}
	if c.Push.APNs.Enabled {
		for k, v := range map[string]string{"push.apns.key_file": c.Push.APNs.KeyFile, "push.apns.key_id": c.Push.APNs.KeyID,
			"push.apns.team_id": c.Push.APNs.TeamID, "push.apns.topic": c.Push.APNs.Topic} {
			if v == "" {
				bad(k, "is required when push.apns.enabled is true")
			}
		}
		if c.Push.APNs.PushType != "background" && c.Push.APNs.PushType != "alert" {
			bad("push.apns.push_type", "must be background or alert, got %q", c.Push.APNs.PushType)
		}
		if c.Push.APNs.Priority != 5 && !(c.Push.APNs.Priority == 10 && c.Push.APNs.PushType == "alert") {
			bad("push.apns.priority", "must be 5 (or 10 for alert pushes)")
		}
	}
	if c.Push.MaxRetries < 0 || c.Push.MaxRetries > 10 {
		bad("push.max_retries", "must be between 0 and 10")
	}
	c.checkPushPorts(bad)
	if c.Telemetry.Traces != "off" && c.Telemetry.Traces != "otlp" {
		bad("telemetry.traces", "must be off or otlp, got %q", c.Telemetry.Traces)
	}
	if e := c.Telemetry.OTLPEndpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("telemetry.otlp_endpoint", "must be an http:// or https:// URL (e.g. http://collector:4318), got %q", e)
		}
	}
	if c.Telemetry.SampleRatio < 0 || c.Telemetry.SampleRatio > 1 {
		bad("telemetry.sample_ratio", "must be between 0 and 1")
	}
	return errs.Err()
}

// checkPushPorts checks push.allowed_ports, and that the enabled
// providers' endpoints are on one of them (push egress would refuse every
// push otherwise).
func (c Config) checkPushPorts(bad func(key, format string, args ...any)) {
	if len(c.Push.AllowedPorts) == 0 {
		bad("push.allowed_ports", "must list at least one port (443: HTTPS, where push services listen)")
	}
	for i, p := range c.Push.AllowedPorts {
		if p < 1 || p > 65535 {
			bad(fmt.Sprintf("push.allowed_ports[%d]", i), "must be a port between 1 and 65535, got %d", p)
		}
	}
	endpoint := func(key, raw string) {
		u, err := url.Parse(raw)
		if err != nil || raw == "" {
			return
		}
		host := u.Hostname()
		ip, err := netip.ParseAddr(host)
		if c.Push.WebPush.AllowLocalEndpoints && (host == "localhost" || (err == nil && ip.IsLoopback())) {
			return // a local stand-in: any port
		}
		port := map[string]int{"https": 443, "http": 80}[u.Scheme]
		if p := u.Port(); p != "" {
			port, _ = strconv.Atoi(p)
		}
		if !slices.Contains(c.Push.AllowedPorts, port) {
			bad(key, "port %d is not in push.allowed_ports %v: push egress would refuse it", port, c.Push.AllowedPorts)
		}
	}
	if c.Push.FCM.Enabled {
		endpoint("push.fcm.endpoint", c.Push.FCM.Endpoint)
		endpoint("push.fcm.token_url", c.Push.FCM.TokenURL)
	}
	if c.Push.APNs.Enabled {
		endpoint("push.apns.endpoint", c.Push.APNs.Endpoint)
	}
}

// publishedSecrets are HS256 secrets that appeared in public source; a
// token signed with one proves nothing.
var publishedSecrets = []string{"routingservice-development-secret-do-not-use-in-production"}

// checkLinks refuses, in production, connections to backends that could be
// read or spoofed on the network or reached without credentials.
func (c Config) checkLinks(bad func(key, format string, args ...any)) {
	if c.Presence.Type == "redis" {
		if !c.Presence.Redis.TLS {
			bad("presence.redis.tls", "must be true in production")
		}
		if c.RedisPassword == "" {
			bad("REDIS_PASSWORD", "the environment variable is required with presence.type redis in production")
		}
	}
	if c.Store.Type == "postgres" && c.DatabaseURL != "" {
		switch m := sslMode(c.DatabaseURL); m {
		case "require", "verify-ca", "verify-full":
		default:
			bad("DATABASE_URL", "the environment variable must set sslmode=require, verify-ca or verify-full in production, got %q", m)
		}
	}
	if c.Bus.Type == "nats" && c.Bus.NATS.URL != "" {
		for _, u := range strings.Split(c.Bus.NATS.URL, ",") {
			if !strings.HasPrefix(strings.TrimSpace(u), "tls://") {
				bad("bus.nats.url", "must use tls:// in production, got %q", strings.TrimSpace(u))
			}
		}
		if c.Bus.NATS.CredentialsFile == "" {
			bad("bus.nats.credentials_file", "is required with bus.type nats in production")
		}
	}
}

// sslMode returns the sslmode of a PostgreSQL URL or key=value string.
func sslMode(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return ""
		}
		return u.Query().Get("sslmode")
	}
	for _, f := range strings.Fields(dsn) {
		if k, v, ok := strings.Cut(f, "="); ok && k == "sslmode" {
			return strings.Trim(v, "'")
		}
	}
	return ""
}

// checkDemo refuses the demo where its token endpoint, which signs in as
// anyone, could be reached by anyone but the machine's own users, or where
// it cannot work.
func (c Config) checkDemo(bad func(key, format string, args ...any)) {
	if !c.Demo.Enabled {
		return
	}
	if c.RunMode == ModeProduction {
		bad("demo.enabled", "is refused in production: /demo/token signs a token for any user who asks")
	}
	if !c.Has(RoleAPI) || !c.Has(RoleRealtime) {
		bad("demo.enabled", "needs the api and realtime roles in this instance, got %v", c.Roles)
	}
	if !slices.Contains(c.Auth.Algorithms, "HS256") {
		bad("demo.enabled", "needs HS256 in auth.algorithms (the demo signs HS256 development tokens)")
	}
	if c.Has(RoleAPI) && !LoopbackListen(c.API.Listen) {
		bad("api.listen", "must be a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT) while demo.enabled is true, "+
			"since /demo/token signs a token for anyone who reaches it; got %q", c.API.Listen)
	}
	if slices.Contains(c.Realtime.AllowedHosts, "*") {
		bad("realtime.allowed_hosts", "wildcard \"*\" is refused while demo.enabled is true (any DNS-rebound name could reach /demo/token)")
	}
}

// MaxTrustedProxyHops bounds realtime.trusted_proxy_hops: more load
// balancers than that in a row is a mistake, not a setup.
const MaxTrustedProxyHops = 8

// checkRealtime checks the WebSocket server's origin rules and limits.
func (c Config) checkRealtime(bad func(key, format string, args ...any)) {
	prod := c.RunMode == ModeProduction
	if c.Realtime.Listen == "" && c.Has(RoleRealtime) && !c.Has(RoleAPI) {
		bad("realtime.listen", "empty serves WebSockets on the API listener, which needs the api role in this instance")
	}
	for i, o := range c.Realtime.AllowedOrigins {
		key := fmt.Sprintf("realtime.allowed_origins[%d]", i)
		if o == "*" {
			if prod {
				bad("realtime.allowed_origins", "wildcard \"*\" is refused in production")
			}
			continue
		}
		if err := checkOrigin(o); err != nil {
			bad(key, "%v", err)
		}
	}
	for i, h := range c.Realtime.AllowedHosts {
		switch {
		case h == "*" && prod:
			bad("realtime.allowed_hosts", "wildcard \"*\" is refused in production")
		case h == "" || strings.ContainsAny(h, "/:[]") && net.ParseIP(h) == nil:
			bad(fmt.Sprintf("realtime.allowed_hosts[%d]", i), "must be a host name or address without scheme or port, got %q", h)
		}
	}
	for i, p := range c.Realtime.TrustedProxies {
		if _, err := netip.ParsePrefix(p); err != nil {
			bad(fmt.Sprintf("realtime.trusted_proxies[%d]", i), "must be a network in CIDR notation, got %q", p)
		}
	}
	if h := c.Realtime.TrustedProxyHops; h < 0 || h > MaxTrustedProxyHops {
		bad("realtime.trusted_proxy_hops", "must be from 0 (clients connect directly) to %d, the X-Forwarded-For entries the load balancers in front append; got %d", MaxTrustedProxyHops, h)
	}
	if c.Realtime.MaxConns < 1 {
		bad("realtime.max_conns", "must be at least 1")
	}
	for k, v := range map[string]int{"realtime.max_conns_per_ip": c.Realtime.MaxConnsPerIP, "realtime.delivery_concurrency": c.Realtime.DeliveryConcurrency} {
		if v < 0 {
			bad(k, "must not be negative (0: no limit)")
		}
	}
	rates := []struct {
		rateKey, burstKey string
		rate              float64
		burst             int
	}{
		{"realtime.connect_rate_per_ip", "realtime.connect_burst_per_ip", c.Realtime.ConnectRatePerIP, c.Realtime.ConnectBurstPerIP},
		{"realtime.connect_rate_per_user", "realtime.connect_burst_per_user", c.Realtime.ConnectRatePerUser, c.Realtime.ConnectBurstPerUser},
		{"realtime.ack_rate", "realtime.ack_burst", c.Realtime.AckRate, c.Realtime.AckBurst},
	}
	for _, r := range rates {
		if r.rate < 0 {
			bad(r.rateKey, "must not be negative (0 turns the limit off)")
		}
		if r.rate > 0 && r.burst < 1 {
			bad(r.burstKey, "must be at least 1")
		}
	}
	if c.Realtime.ReadHeaderTimeout <= 0 {
		bad("realtime.read_header_timeout", "must be a positive duration")
	}
	if c.Realtime.IdleTimeout <= 0 {
		bad("realtime.idle_timeout", "must be a positive duration")
	}
}

// checkOrigin reports whether origin is scheme://host[:port] (http or https,
// the host possibly with * wildcards): the WebSocket library's origin
// patterns match it against the whole Origin header, scheme included.
func checkOrigin(origin string) error {
	scheme, host, ok := strings.Cut(origin, "://")
	if !ok || (scheme != "http" && scheme != "https") || host == "" || strings.ContainsAny(host, "/?#@") {
		return fmt.Errorf("must be an origin scheme://host[:port] (http or https), got %q", origin)
	}
	if _, err := path.Match(origin, ""); err != nil {
		return fmt.Errorf("bad wildcard in %q: %v", origin, err)
	}
	return nil
}

func validName(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func defaultInstanceID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := make([]byte, 0, 32)
	for i := 0; i < len(host) && len(name) < 40; i++ {
		c := host[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			name = append(name, c)
		}
	}
	if len(name) == 0 {
		name = append(name, "instance"...)
	}
	return string(name) + "-" + hex.EncodeToString(b[:])
}

// LoopbackListen reports whether addr (host:port) binds a loopback address
// only: "localhost" or a literal loopback IP, not an empty host (every
// interface).
func LoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
