package natsbus

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/datadir"
	"github.com/go-routing-service/routingservice/internal/ident"
)

// Settings are bus.nats.* in config.yaml: the embedded server's and the
// external cluster's.
type Settings struct {
	// URL of an external cluster (bus.type nats).
	URL string `yaml:"url"`
	// SubjectPrefix is the first token of every subject the service uses,
	// and names its streams and consumers.
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
	// PublishAckTimeout bounds the wait for a publish's acknowledgement
	// (a stream leader that dies holding a publish never sends it): the
	// publish then fails and is tried again, rather than waiting out the
	// pipeline's handler timeout.
	PublishAckTimeout time.Duration `yaml:"publish_ack_timeout"`
}

// DefaultSettings are the keys' defaults.
func DefaultSettings() Settings {
	return Settings{Sync: "1s", SubjectPrefix: "routing", Replicas: 1, DuplicateWindow: 2 * time.Minute, MaxAge: 7 * 24 * time.Hour,
		PublishAckTimeout: 2 * time.Second}
}

// maxPrefix is the longest subject prefix: stream and consumer names are
// made of it.
const maxPrefix = 32

// Check reports each problem of the keys whatever the engine, keys
// relative to bus.nats.
func (s Settings) Check(bad func(key, msg string)) {
	if !ident.Valid(s.SubjectPrefix) || len(s.SubjectPrefix) > maxPrefix {
		bad("subject_prefix", fmt.Sprintf("must be 1-%d characters of [A-Za-z0-9_-], got %q", maxPrefix, s.SubjectPrefix))
	}
	if s.Replicas < 1 || s.Replicas > 5 {
		bad("replicas", "must be between 1 and 5")
	}
	if s.DuplicateWindow <= 0 {
		bad("duplicate_window", "must be positive")
	}
	if s.PublishAckTimeout <= 0 {
		bad("publish_ack_timeout", "must be positive")
	}
}

// Engine is the bus on NATS JetStream: a server embedded in the process
// (bus.type embedded, one instance) or an external cluster (bus.type
// nats). Streams and consumers are named from SubjectPrefix.
type Engine struct {
	Settings Settings
	// Embedded runs the server in the process, under the data dir.
	Embedded bool
}

var _ bus.Engine = Engine{}

// Shared: an external cluster is; the embedded server serves its process.
func (e Engine) Shared() bool { return !e.Embedded }

// System is NATS.
func (Engine) System() string { return "nats" }

// PacksDeliveries: packs cost NATS nothing but save writes and acks.
func (Engine) PacksDeliveries() bool { return true }

// Unused: NATS names its streams and consumers from the subject prefix,
// never from the Pub/Sub names; the embedded server needs no URL.
func (e Engine) Unused() []string {
	u := []string{"ingress_topic", "ingress_subscription", "delivery_topic", "ingress_dead_letter_topic", "delivery_dead_letter_topic", "pubsub"}
	if e.Embedded {
		u = append(u, "nats.url", "nats.credentials_file")
	}
	return u
}

// Check requires a sync policy (embedded) or a URL (external), and with
// links TLS and credentials.
func (e Engine) Check(_ bus.Config, env bus.Env, bad func(key, msg string)) {
	s := e.Settings
	if e.Embedded {
		if s.Sync != "always" {
			if d, err := time.ParseDuration(s.Sync); err != nil || d <= 0 {
				bad("nats.sync", fmt.Sprintf("must be \"always\" or a positive duration, got %q", s.Sync))
			}
		}
		return
	}
	if s.URL == "" {
		bad("nats.url", "is required when bus.type is nats")
	}
	if !env.Links || s.URL == "" {
		return
	}
	for _, u := range strings.Split(s.URL, ",") {
		if !strings.HasPrefix(strings.TrimSpace(u), "tls://") {
			bad("nats.url", fmt.Sprintf("must use tls:// in production, got %q", strings.TrimSpace(u)))
		}
	}
	if s.CredentialsFile == "" {
		bad("nats.credentials_file", "is required with bus.type nats in production")
	}
}

// Preflight checks the credentials file of an external cluster: a user
// JWT and its seed.
func (e Engine) Preflight(bad func(key string, err error)) {
	path := e.Settings.CredentialsFile
	if e.Embedded || path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err == nil {
		if _, err = jwt.ParseDecoratedJWT(b); err != nil {
			err = fmt.Errorf("%s holds no NATS user JWT: %w", path, err)
		} else if _, err = jwt.ParseDecoratedNKey(b); err != nil {
			err = fmt.Errorf("%s holds no NATS user seed: %w", path, err)
		}
	}
	if err != nil {
		bad("nats.credentials_file", err)
	}
}

// driverConfig is the driver's configuration.
func (e Engine) driverConfig(c bus.Config, env bus.Env) Config {
	return Config{
		SubjectPrefix:       e.Settings.SubjectPrefix,
		MaxDeliveryAttempts: c.MaxDeliveryAttempts,
		AckDeadline:         c.AckDeadline,
		Prefetch:            max(1, c.MaxOutstanding-env.Concurrency),
		MaxAckPending:       16 * c.MaxOutstanding,
		Replicas:            e.Settings.Replicas,
		DuplicateWindow:     e.Settings.DuplicateWindow,
		MaxAge:              e.Settings.MaxAge,
		PublishAckTimeout:   e.Settings.PublishAckTimeout,
		WaitForServer:       !e.Embedded,
		Logger:              env.Logger,
	}
}

// storeDir is where the embedded server keeps its streams.
func storeDir(env bus.Env) string { return filepath.Join(env.DataDir, "nats") }

// Open starts the embedded server, or connects to the cluster, and opens
// the driver on it.
func (e Engine) Open(ctx context.Context, c bus.Config, env bus.Env) (driver.Driver, func() error, error) {
	nc := e.driverConfig(c, env)
	if !e.Embedded {
		// A cluster that is down at start is waited for: the connection
		// keeps trying, the driver sets the streams up once it answers.
		conn, err := Connect(e.Settings.URL, e.Settings.CredentialsFile, nats.RetryOnFailedConnect(true))
		if err != nil {
			return nil, nil, fmt.Errorf("bus (config key bus.nats.url): %w", err)
		}
		d, err := New(ctx, conn, nc)
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("bus (nats): %w", prefixKey(err))
		}
		return d, func() error { conn.Close(); return nil }, nil
	}
	eo := EmbeddedOptions{SyncAlways: e.Settings.Sync == "always", Logger: env.Logger}
	if !eo.SyncAlways {
		d, err := time.ParseDuration(e.Settings.Sync)
		if err != nil {
			return nil, nil, fmt.Errorf("config key bus.nats.sync: %w", err)
		}
		eo.SyncInterval = d
	}
	dir := storeDir(env)
	srv, err := StartEmbedded(dir, eo)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded bus in %s: %w", dir, err)
	}
	conn, err := srv.Connect()
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return nil, nil, fmt.Errorf("embedded bus: %w", err)
	}
	d, err := New(ctx, conn, nc)
	if err != nil {
		conn.Close()
		_ = srv.Shutdown(context.Background())
		return nil, nil, fmt.Errorf("embedded bus: %w", prefixKey(err))
	}
	env.Logger.Info("bus", "type", "embedded", "dir", dir, "sync", e.Settings.Sync)
	closeAll := func() error {
		conn.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
	return d, closeAll, nil
}

// prefixKey names the configuration key behind a stream of another
// deployment.
func prefixKey(err error) error {
	if errors.Is(err, ErrForeignStream) {
		return fmt.Errorf("config key bus.nats.subject_prefix: %w (another deployment on this NATS server uses these stream names; give each deployment its own prefix)", err)
	}
	return err
}

// Inspect says, for the embedded server, where it would keep its streams
// (nothing to reach); for a cluster, which server answered and which of
// the streams and the ingress consumer exist.
func (e Engine) Inspect(ctx context.Context, c bus.Config, env bus.Env) (string, error) {
	if e.Embedded {
		// The server makes its storage directory in the data dir.
		dir := storeDir(env)
		how := "directory " + dir + " writable"
		if err := datadir.Writable(dir); errors.Is(err, fs.ErrNotExist) {
			how, err = datadir.Creatable(env.DataDir, env.DataDir)
			if err != nil {
				return "", fmt.Errorf("embedded NATS storage %s: %w", dir, err)
			}
		} else if err != nil {
			return "", fmt.Errorf("embedded NATS storage: %w", err)
		}
		return fmt.Sprintf("embedded NATS JetStream, nothing to reach: it starts with the service (storage in %s; %s)", dir, how), nil
	}
	conn, err := Connect(e.Settings.URL, e.Settings.CredentialsFile, nats.Timeout(env.Timeout), nats.NoReconnect())
	if err != nil {
		return "", fmt.Errorf("nats (config key bus.nats.url): %w", err)
	}
	defer conn.Close()
	topo, err := Inspect(ctx, conn, e.driverConfig(c, env))
	if err != nil {
		return "", fmt.Errorf("nats %s: %w", conn.ConnectedUrlRedacted(), prefixKey(err))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "nats %s (server %s), JetStream reachable (the account holds %d streams); %s, %s", conn.ConnectedUrlRedacted(),
		conn.ConnectedServerVersion(), topo.Account.Streams,
		bus.Resources{Noun: "stream", Found: topo.Streams, Missing: topo.MissingStreams},
		bus.Resources{Noun: "consumer", Found: topo.Consumers, Missing: topo.MissingConsumers})
	if missing := slices.Concat(topo.MissingStreams, topo.MissingConsumers); len(missing) > 0 {
		fmt.Fprintf(&b, "; serve creates %s", strings.Join(missing, ", "))
	}
	return b.String(), nil
}

// Maintain: consumers of instances gone expire on their own.
func (Engine) Maintain(context.Context, bus.Config, bus.Env, bus.InstancePresence) {}
