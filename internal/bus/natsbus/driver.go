// Package natsbus is the bus driver for NATS JetStream, on a server embedded
// in the process (StartEmbedded) or an external cluster (Connect).
//
// Layout, for a subject prefix P (one per deployment: several deployments
// can share a NATS server with different prefixes):
//
//   - stream "P-ingress" holds subject "P.ingress" (work-queue retention: a
//     message is removed once acked) and has one durable pull consumer,
//     "P-pipeline", shared by every pipeline instance;
//   - stream "P-delivery" holds "P.delivery.<instance>" (interest retention)
//     and has one durable pull consumer per instance, "P-instance-<instance>",
//     filtered to its subject, deleted by the server when the instance has
//     not pulled for Config.DeliveryInactiveThreshold;
//   - streams "P-ingress-dlq" and "P-delivery-dlq" hold the dead letters,
//     on "P.dlq.ingress" and "P.dlq.delivery".
//
// A stream of that name whose subjects are not these (another deployment's)
// is never rewritten: New refuses it with ErrForeignStream, and Ping fails
// when the ingress stream stops being this deployment's.
//
// Message.ID travels as the Nats-Msg-Id header, so JetStream stores a
// repeated id once within the stream's duplicate window; attributes travel
// as headers. Consumers have MaxDeliver set to the delivery attempts, and
// the max-deliveries advisory copies a message whose deliveries ran out
// unsettled into its dead-letter stream. Only JetStream features present in
// nats-server 2.9 are used.
package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/ident"
)

// ErrForeignStream is returned by New for a stream that has this
// deployment's name but another deployment's subjects.
var ErrForeignStream = errors.New("stream belongs to another subject prefix")

// Config configures a Driver. Zero fields take the defaults documented on
// each.
type Config struct {
	// SubjectPrefix names every subject, stream and consumer of one
	// deployment; default "routing".
	SubjectPrefix string

	// MaxDeliveryAttempts is the consumers' MaxDeliver: after that many
	// deliveries the server stops redelivering a message (the portable bus
	// dead-letters it on its last attempt; the advisory catches those never
	// settled). Default 5.
	MaxDeliveryAttempts int
	// AckDeadline is how long a received message may stay unsettled before
	// the server redelivers it; default 30s.
	AckDeadline time.Duration
	// Prefetch is how many messages one subscription asks the server for
	// ahead of its receiver; default 256.
	Prefetch int
	// MaxAckPending bounds the unacknowledged messages of a consumer across
	// all instances (JetStream's max_ack_pending); default 16000.
	MaxAckPending int

	// Replicas of each stream; default 1.
	Replicas int
	// DuplicateWindow within which a repeated Message.ID is stored once;
	// default 2m.
	DuplicateWindow time.Duration
	// MaxAge of messages in every stream; default 7 days.
	MaxAge time.Duration
	// DeliveryInactiveThreshold is how long an instance's delivery consumer
	// survives without that instance pulling; default 1h.
	DeliveryInactiveThreshold time.Duration
	// PublishAckTimeout bounds the wait for one publish's acknowledgement,
	// whatever the caller's context allows: a stream leader that died after
	// receiving a publish never acknowledges it, and the publish fails
	// after this long (to be tried again by the caller) rather than after
	// the caller's deadline. Default 2s.
	PublishAckTimeout time.Duration
	// WaitForServer makes New succeed while the server does not answer
	// (it is down, or its cluster has no JetStream leader yet): the streams
	// and consumers are then set up in the background, with backoff, once
	// it does; Ping fails meanwhile, saying what it waits for. A server
	// that answers and refuses the topology (another deployment's streams)
	// still fails New.
	WaitForServer bool

	// Logger receives the driver's logs; default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = "routing"
	}
	defD := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defD(&c.AckDeadline, 30*time.Second)
	defD(&c.DuplicateWindow, 2*time.Minute)
	defD(&c.MaxAge, 7*24*time.Hour)
	defD(&c.DeliveryInactiveThreshold, time.Hour)
	defD(&c.PublishAckTimeout, 2*time.Second)
	if c.MaxDeliveryAttempts <= 0 {
		c.MaxDeliveryAttempts = 5
	}
	if c.Prefetch <= 0 {
		c.Prefetch = 256
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 16000
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if !ident.Valid(c.SubjectPrefix) || len(c.SubjectPrefix) > maxPrefix {
		return fmt.Errorf("natsbus: subject prefix %q must be 1-32 characters of [A-Za-z0-9_-]", c.SubjectPrefix)
	}
	return nil
}

func checkInstance(instance string) error {
	if !ident.Valid(instance) {
		return fmt.Errorf("instance %q must be 1-64 characters of [A-Za-z0-9_-]", instance)
	}
	return nil
}

// queue is one of the two consumed streams with its dead-letter stream.
type queue struct {
	name      string // driver.QueueIngress or driver.QueueDelivery
	stream    string
	dlqStream string
	dlqSub    string // subject of the dead-letter stream
}

// Driver is a driver.Driver on NATS JetStream. It does not own the
// connection it was given.
type Driver struct {
	cfg Config
	nc  *nats.Conn
	js  jetstream.JetStream
	log *slog.Logger

	ingressSubject  string
	ingressConsumer string
	ingress         queue
	delivery        queue

	// ctx is cancelled by Close.
	ctx    context.Context
	cancel context.CancelFunc

	mu            sync.Mutex
	closed        atomic.Bool
	advisory      []*nats.Subscription
	onEngineDead  func(queue string)
	subscriptions sync.WaitGroup

	// setupMu serialises setups; ready is set once the streams, the
	// ingress consumer and the advisory subscriptions exist; waiting is
	// why they do not yet (nil once ready).
	setupMu sync.Mutex
	ready   atomic.Bool
	waiting atomic.Pointer[error]
	setupWG sync.WaitGroup
}

var _ driver.Driver = (*Driver)(nil)

// New creates the streams and the ingress consumer, or verifies them
// (updating settings other than their subjects), and subscribes to the
// max-deliveries advisories that feed the dead-letter streams. With
// Config.WaitForServer, a server that does not answer yet is waited for in
// the background (see WaitForServer).
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Driver, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(cfg.PublishAckTimeout))
	if err != nil {
		return nil, fmt.Errorf("natsbus: jetstream: %w", err)
	}
	d := newDriver(nc, js, cfg)
	d.ctx, d.cancel = context.WithCancel(context.Background())
	err = d.setup(ctx)
	if err == nil {
		return d, nil
	}
	if !cfg.WaitForServer || !d.unreachable(err) || ctx.Err() != nil {
		d.cancel()
		return nil, err
	}
	d.waiting.Store(&err)
	d.log.Warn("NATS JetStream does not answer: waiting for it, and setting up the streams once it answers", "err", err)
	d.setupWG.Add(1)
	go d.setupUntilReady()
	return d, nil
}

// setup creates or verifies the topology and subscribes to the
// advisories, once.
func (d *Driver) setup(ctx context.Context) error {
	d.setupMu.Lock()
	defer d.setupMu.Unlock()
	if d.ready.Load() {
		return nil
	}
	if st := d.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("natsbus: connection %s", st)
	}
	for _, sc := range d.streams() {
		if err := d.ensureStream(ctx, sc); err != nil {
			return err
		}
	}
	if _, err := d.ingressCons(ctx); err != nil {
		return err
	}
	if err := d.subscribeAdvisories(); err != nil {
		return err
	}
	d.ready.Store(true)
	d.waiting.Store(nil)
	return nil
}

// setupUntilReady sets the topology up, with backoff from 250 ms to 5 s,
// until it is or the driver closes.
func (d *Driver) setupUntilReady() {
	defer d.setupWG.Done()
	wait := 250 * time.Millisecond
	for {
		t := time.NewTimer(wait)
		select {
		case <-d.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
		err := d.setup(ctx)
		cancel()
		if err == nil {
			d.log.Info("NATS JetStream answers: streams and consumers set up")
			return
		}
		if d.ctx.Err() != nil {
			return
		}
		d.waiting.Store(&err)
		if !d.unreachable(err) {
			d.log.Error("NATS JetStream refuses this deployment's streams; trying again", "err", err)
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// unreachable reports whether err, from setting the topology up, means
// the server (or its JetStream) does not answer yet, rather than a
// refusal of the topology.
func (d *Driver) unreachable(err error) bool {
	if d.nc.Status() != nats.CONNECTED {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 503 || apiErr.Code == 408 || apiErr.ErrorCode == jsErrCodeClusterNotAvail
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}

// jsErrCodeClusterNotAvail is JetStream's "JetStream system temporarily
// unavailable" (JSClusterNotAvailErr), answered while a cluster elects
// its meta leader.
const jsErrCodeClusterNotAvail jetstream.ErrorCode = 10008

// notReady is the error of an operation that needs the topology before
// the server has answered.
func (d *Driver) notReady() error {
	if d.ready.Load() {
		return nil
	}
	if p := d.waiting.Load(); p != nil {
		return fmt.Errorf("natsbus: waiting for NATS JetStream to answer (streams not set up yet): %w", *p)
	}
	return errors.New("natsbus: waiting for NATS JetStream to answer (streams not set up yet)")
}

// newDriver names the streams and consumers of cfg's subject prefix; it
// creates nothing.
func newDriver(nc *nats.Conn, js jetstream.JetStream, cfg Config) *Driver {
	p := cfg.SubjectPrefix
	return &Driver{
		cfg:             cfg,
		nc:              nc,
		js:              js,
		log:             cfg.Logger.With("component", "natsbus"),
		ingressSubject:  p + ".ingress",
		ingressConsumer: p + "-pipeline",
		ingress:         queue{name: driver.QueueIngress, stream: p + "-ingress", dlqStream: p + "-ingress-dlq", dlqSub: p + ".dlq.ingress"},
		delivery:        queue{name: driver.QueueDelivery, stream: p + "-delivery", dlqStream: p + "-delivery-dlq", dlqSub: p + ".dlq.delivery"},
	}
}

// streams are the settings of every stream of the deployment.
func (d *Driver) streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		d.streamConfig(d.ingress.stream, d.ingressSubject, jetstream.WorkQueuePolicy),
		d.streamConfig(d.delivery.stream, d.cfg.SubjectPrefix+".delivery.*", jetstream.InterestPolicy),
		d.streamConfig(d.ingress.dlqStream, d.ingress.dlqSub, jetstream.LimitsPolicy),
		d.streamConfig(d.delivery.dlqStream, d.delivery.dlqSub, jetstream.LimitsPolicy),
	}
}

// Capabilities: JetStream deduplicates by Nats-Msg-Id within the duplicate
// window and delays a nak as asked.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{DedupWindow: d.cfg.DuplicateWindow, NackDelay: true, Backlog: true, Extend: true}
}

func (d *Driver) streamConfig(name, subject string, retention jetstream.RetentionPolicy) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{subject},
		Retention:  retention,
		Storage:    jetstream.FileStorage,
		Replicas:   d.cfg.Replicas,
		Duplicates: d.cfg.DuplicateWindow,
		MaxAge:     d.cfg.MaxAge,
		Discard:    jetstream.DiscardOld,
	}
}

// ensureStream creates the stream, or updates it when the settings this
// driver owns differ. A stream of that name with other subjects belongs to
// another deployment: it is refused, never rewritten.
func (d *Driver) ensureStream(ctx context.Context, want jetstream.StreamConfig) error {
	s, err := d.js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return d.createStream(ctx, want)
	}
	if err != nil {
		return fmt.Errorf("natsbus: stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if err := refuseStream(have, want); err != nil {
		return err
	}
	if have.Replicas == want.Replicas && have.Duplicates == want.Duplicates && have.MaxAge == want.MaxAge {
		return nil
	}
	upd := have
	upd.Replicas, upd.Duplicates, upd.MaxAge = want.Replicas, want.Duplicates, want.MaxAge
	if _, err := d.js.UpdateStream(ctx, upd); err != nil {
		return fmt.Errorf("natsbus: update stream %s: %w", want.Name, err)
	}
	d.log.Info("stream settings updated", "stream", want.Name)
	return nil
}

// refuseStream returns the error of an existing stream whose settings
// cannot be made those wanted: it is another deployment's (other
// subjects), or its retention or storage differs, which JetStream cannot
// change.
func refuseStream(have, want jetstream.StreamConfig) error {
	switch {
	case !slices.Equal(have.Subjects, want.Subjects):
		return fmt.Errorf("natsbus: stream %s holds subjects %v, not %v: %w", want.Name, have.Subjects, want.Subjects, ErrForeignStream)
	case have.Retention != want.Retention:
		return fmt.Errorf("natsbus: stream %s has retention %s, want %s (a stream's retention cannot change; delete it or use another subject prefix)",
			want.Name, have.Retention, want.Retention)
	case have.Storage != want.Storage:
		return fmt.Errorf("natsbus: stream %s uses %s storage, want %s", want.Name, have.Storage, want.Storage)
	}
	return nil
}

// storeCreateAttempts bounds how often createStream asks for a stream whose
// store the server could not create.
const storeCreateAttempts = 5

// createStream creates the stream. A refusal to create its store ("error
// creating store for stream") is tried again, up to storeCreateAttempts
// times with a backoff from 50 ms. nats-server (2.15.2, the version
// embedded here) answers it when it has just deleted the last stream of
// an account while another is being created: the deletion removes the
// then empty <store>/<account>/streams directory in a goroutine of its
// own, which can run in the middle of the new stream's MkdirAll ("could
// not create storage directory - mkdir .../streams: no such file or
// directory" in the server's log). Asking again creates the directories
// anew. A store that keeps failing (disk full, no permission) fails after
// the last attempt, with the server's answer.
func (d *Driver) createStream(ctx context.Context, want jetstream.StreamConfig) error {
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		_, err := d.js.CreateStream(ctx, want)
		if err == nil || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil
		}
		if !storeRefused(err) || attempt == storeCreateAttempts {
			return fmt.Errorf("natsbus: create stream %s: %w", want.Name, err)
		}
		d.log.Warn("server could not create the stream's store; asking again (the server's log has the cause)",
			"stream", want.Name, "attempt", attempt, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("natsbus: create stream %s: %w (last refusal: %v)", want.Name, ctx.Err(), err)
		}
		backoff *= 2
	}
}

// storeRefused reports whether err is the server's refusal to create a
// stream's store (JetStream API error 10049, "error creating store for
// stream"), which hides the file system error in the server's log.
func storeRefused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeStreamCreate &&
		strings.Contains(apiErr.Description, "error creating store for stream")
}

// jsErrCodeStreamCreate is JetStream's generic stream creation error
// (JSStreamCreateErrF), which the jetstream package does not name.
const jsErrCodeStreamCreate jetstream.ErrorCode = 10049

// ensureConsumer creates or updates a durable pull consumer with the
// delivery settings of the configuration.
func (d *Driver) ensureConsumer(ctx context.Context, stream string, cc jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	cc.AckPolicy = jetstream.AckExplicitPolicy
	cc.DeliverPolicy = jetstream.DeliverAllPolicy
	cc.AckWait = d.cfg.AckDeadline
	cc.MaxDeliver = d.cfg.MaxDeliveryAttempts
	cc.MaxAckPending = d.cfg.MaxAckPending
	c, err := d.js.CreateOrUpdateConsumer(ctx, stream, cc)
	if err != nil {
		return nil, fmt.Errorf("natsbus: consumer %s on stream %s: %w", cc.Durable, stream, err)
	}
	return c, nil
}

func (d *Driver) ingressCons(ctx context.Context) (jetstream.Consumer, error) {
	return d.ensureConsumer(ctx, d.ingress.stream, jetstream.ConsumerConfig{
		Durable:       d.ingressConsumer,
		FilterSubject: d.ingressSubject,
	})
}

func (d *Driver) deliveryCons(ctx context.Context, instance string) (jetstream.Consumer, error) {
	return d.ensureConsumer(ctx, d.delivery.stream, jetstream.ConsumerConfig{
		Durable:           d.cfg.SubjectPrefix + "-instance-" + instance,
		FilterSubject:     d.deliverySubject(instance),
		InactiveThreshold: d.cfg.DeliveryInactiveThreshold,
	})
}

func (d *Driver) deliverySubject(instance string) string {
	return d.cfg.SubjectPrefix + ".delivery." + instance
}

// PrepareDelivery creates (or updates) instance's delivery consumer without
// receiving. Events published to instance from its return on are kept for
// it (until the consumer's inactive threshold passes without a receiver);
// events published before it are dropped.
func (d *Driver) PrepareDelivery(ctx context.Context, instance string) error {
	if d.closed.Load() {
		return driver.ErrClosed
	}
	if err := checkInstance(instance); err != nil {
		return fmt.Errorf("natsbus: %w", err)
	}
	if err := d.setup(ctx); err != nil {
		return d.notReady()
	}
	_, err := d.deliveryCons(ctx, instance)
	return err
}

// IngressBacklog is the ingress consumer's pending plus unacknowledged
// messages (one consumer-info request).
func (d *Driver) IngressBacklog(ctx context.Context) (int64, error) {
	if d.closed.Load() {
		return 0, driver.ErrClosed
	}
	c, err := d.js.Consumer(ctx, d.ingress.stream, d.ingressConsumer)
	if err != nil {
		return 0, fmt.Errorf("natsbus: ingress backlog: %w", err)
	}
	info := c.CachedInfo()
	return int64(info.NumPending) + int64(info.NumAckPending), nil
}

// CheckSetup has nothing to check beyond the topology New verified.
func (d *Driver) CheckSetup(context.Context) error { return nil }

// Ping reports whether the server's JetStream answers, the ingress
// stream still holds this deployment's ingress subject, and the ingress
// and delivery streams have a leader (a replicated stream that lost its
// quorum answers its info from a member but stores no publish).
func (d *Driver) Ping(ctx context.Context) error {
	if d.closed.Load() {
		return driver.ErrClosed
	}
	if s := d.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("natsbus: ping: connection %s", s)
	}
	if !d.ready.Load() {
		if err := d.setup(ctx); err != nil {
			return fmt.Errorf("natsbus: ping: %w", d.notReady())
		}
	}
	s, err := d.js.Stream(ctx, d.ingress.stream)
	if err != nil {
		return fmt.Errorf("natsbus: ping: ingress stream %s: %w", d.ingress.stream, err)
	}
	info := s.CachedInfo()
	if subj := info.Config.Subjects; !slices.Equal(subj, []string{d.ingressSubject}) {
		return fmt.Errorf("natsbus: ping: ingress stream %s holds subjects %v, not %s: %w", d.ingress.stream, subj, d.ingressSubject, ErrForeignStream)
	}
	if err := leaderless(info); err != nil {
		return err
	}
	if info.Config.Replicas <= 1 {
		return nil // one server: it answered, so it leads the streams
	}
	ds, err := d.js.Stream(ctx, d.delivery.stream)
	if err != nil {
		return fmt.Errorf("natsbus: ping: delivery stream %s: %w", d.delivery.stream, err)
	}
	return leaderless(ds.CachedInfo())
}

// replicaSilence is how long a stream's leader may go without hearing
// from a replica before the replica counts as gone (replicas answer the
// leader's heartbeats every second).
const replicaSilence = 3 * time.Second

// leaderless returns the error of a replicated stream that cannot store a
// publish: it has no leader, or its leader hears from too few replicas
// for a quorum (a leader whose followers died goes on answering the
// stream's info as its leader, with its replicas silent for longer and
// longer, while every publish times out).
func leaderless(info *jetstream.StreamInfo) error {
	r := info.Config.Replicas
	if r <= 1 {
		return nil
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return fmt.Errorf("natsbus: ping: stream %s has no leader (its replicas elect one, or lost their quorum): publishing waits for it", info.Config.Name)
	}
	alive := 1 // the leader
	for _, p := range info.Cluster.Replicas {
		if p != nil && !p.Offline && p.Active < replicaSilence {
			alive++
		}
	}
	if alive <= r/2 {
		return fmt.Errorf("natsbus: ping: stream %s: its leader %s hears from %d of its %d replicas, short of a quorum: publishing waits for them",
			info.Config.Name, info.Cluster.Leader, alive, r)
	}
	return nil
}

// Close unsubscribes from the advisories and waits for the subscriptions'
// pumps. It leaves the connection open (the caller owns it). Closing twice
// is harmless.
func (d *Driver) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.cancel()
	d.setupWG.Wait()
	d.mu.Lock()
	subs := d.advisory
	d.advisory = nil
	d.mu.Unlock()
	var errs []error
	for _, s := range subs {
		if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, fmt.Errorf("natsbus: unsubscribe %s: %w", s.Subject, err))
		}
	}
	d.subscriptions.Wait()
	return errors.Join(errs...)
}

// redactURL drops the user information from each URL of a comma-separated list.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = nil
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
