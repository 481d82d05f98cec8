// Package natsbus is the bus.Bus adapter for NATS JetStream, on a server
// embedded in the process (StartEmbedded) or an external cluster (Connect).
//
// Layout, for a subject prefix P:
//
//   - the ingress stream holds subject "P.ingress" (work-queue retention:
//     a message is removed once acked) and has one durable pull consumer
//     shared by every pipeline instance;
//   - the delivery stream holds "P.delivery.<instance>" (interest
//     retention) and has one durable pull consumer per instance, filtered to
//     its subject, deleted by the server when the instance has not pulled for
//     Config.DeliveryInactiveThreshold;
//   - the dead-letter streams hold "P.dlq.ingress" and "P.dlq.delivery".
//
// Message.ID travels as the Nats-Msg-Id header (deduplicated within the
// stream's duplicate window), attributes as headers. Only JetStream features
// present in nats-server 2.9 are used.
package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
)

// Header names the adapter uses beside the attributes. Attribute keys may
// not start with "Nats-" or "Routing-".
const (
	// hdrID carries Message.ID when Nats-Msg-Id cannot (replays and
	// dead-letter copies, whose Nats-Msg-Id deduplicates something else).
	hdrID = "Routing-Id"
	// hdrSubject is the original subject of a dead-lettered message.
	hdrSubject = "Routing-Subject"
	// hdrOrderingKey carries Message.OrderingKey.
	hdrOrderingKey = "Routing-Ordering-Key"
)

// Config configures a Bus. FromConfig fills it from the service
// configuration; zero fields take the defaults documented on each.
type Config struct {
	// SubjectPrefix is the first token of every subject; default "routing".
	SubjectPrefix string
	// IngressStream names the ingress stream (bus.ingress_topic).
	IngressStream string
	// IngressConsumer names the durable consumer shared by the pipeline
	// instances (bus.ingress_subscription).
	IngressConsumer string
	// DeliveryStream names the delivery stream (bus.delivery_topic).
	DeliveryStream string
	// DeliveryConsumerPrefix prefixes an instance's name to name its
	// delivery consumer; default "instance-".
	DeliveryConsumerPrefix string
	// IngressDeadLetterStream and DeliveryDeadLetterStream name the
	// dead-letter streams (bus.ingress_dead_letter_topic,
	// bus.delivery_dead_letter_topic).
	IngressDeadLetterStream  string
	DeliveryDeadLetterStream string

	// MaxDeliveryAttempts before a message is dead-lettered; default 5.
	MaxDeliveryAttempts int
	// AckDeadline is how long a handler may hold a message before the
	// server redelivers it; default 30s.
	AckDeadline time.Duration
	// MinBackoff and MaxBackoff bound the delay before a message whose
	// handler failed is redelivered: MinBackoff doubling per attempt up to
	// MaxBackoff; defaults 1s and 60s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// MaxOutstanding bounds the messages one Receive call holds
	// unacknowledged (prefetched plus in handlers); default 1000.
	MaxOutstanding int
	// Concurrency is the number of handlers one Receive call runs at once;
	// default MaxOutstanding/2 (at least 1).
	Concurrency int
	// MaxAckPending bounds the unacknowledged messages of a consumer across
	// all instances (JetStream's max_ack_pending); default 16×MaxOutstanding.
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

	// Logger receives the adapter's logs; default slog.Default().
	Logger *slog.Logger

	// OnDeadLetter, when set, is called once for each message the adapter
	// moves to a dead-letter stream (by a handler's permanent error, on the
	// last attempt, or through the max-deliveries advisory), with the queue
	// (bus.QueueIngress or bus.QueueDelivery) and the reason. It must not
	// block.
	OnDeadLetter func(queue, reason string)
}

// FromConfig maps the service's bus configuration onto a Config.
func FromConfig(c config.Bus) Config {
	return Config{
		SubjectPrefix:            "routing",
		IngressStream:            c.IngressTopic,
		IngressConsumer:          c.IngressSubscription,
		DeliveryStream:           c.DeliveryTopic,
		IngressDeadLetterStream:  c.IngressDeadLetterTopic,
		DeliveryDeadLetterStream: c.DeliveryDeadLetterTopic,
		MaxDeliveryAttempts:      c.MaxDeliveryAttempts,
		AckDeadline:              c.AckDeadline,
		MinBackoff:               c.MinBackoff,
		MaxBackoff:               c.MaxBackoff,
		MaxOutstanding:           c.MaxOutstanding,
		Replicas:                 c.NATS.Replicas,
		DuplicateWindow:          c.NATS.DuplicateWindow,
		MaxAge:                   c.NATS.MaxAge,
	}
}

func (c *Config) fill() error {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.SubjectPrefix, "routing")
	def(&c.DeliveryConsumerPrefix, "instance-")
	defD := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defD(&c.AckDeadline, 30*time.Second)
	defD(&c.MinBackoff, time.Second)
	defD(&c.MaxBackoff, 60*time.Second)
	defD(&c.DuplicateWindow, 2*time.Minute)
	defD(&c.MaxAge, 7*24*time.Hour)
	defD(&c.DeliveryInactiveThreshold, time.Hour)
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.MaxDeliveryAttempts <= 0 {
		c.MaxDeliveryAttempts = 5
	}
	if c.MaxOutstanding <= 0 {
		c.MaxOutstanding = 1000
	}
	if c.Concurrency <= 0 {
		c.Concurrency = max(1, c.MaxOutstanding/2)
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 16 * c.MaxOutstanding
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	var errs []error
	for k, v := range map[string]string{
		"IngressStream": c.IngressStream, "IngressConsumer": c.IngressConsumer, "DeliveryStream": c.DeliveryStream,
		"IngressDeadLetterStream": c.IngressDeadLetterStream, "DeliveryDeadLetterStream": c.DeliveryDeadLetterStream,
		"DeliveryConsumerPrefix": c.DeliveryConsumerPrefix, "SubjectPrefix": c.SubjectPrefix,
	} {
		if !validName(v) {
			errs = append(errs, fmt.Errorf("natsbus: config %s %q must be 1-64 characters of [A-Za-z0-9_-]", k, v))
		}
	}
	return errors.Join(errs...)
}

// validName reports whether s can be a stream, consumer or subject token name.
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

// queue is one of the two consumed streams with its dead-letter stream.
type queue struct {
	name      string // bus.QueueIngress or bus.QueueDelivery
	stream    string
	dlqStream string
	dlqSub    string // subject of the dead-letter stream
}

// Bus is a bus.Bus and bus.DeadLetters on NATS JetStream. It is safe for
// concurrent use. It does not own the connection it was given.
type Bus struct {
	cfg Config
	nc  *nats.Conn
	js  jetstream.JetStream
	log *slog.Logger

	ingressSubject string
	ingress        queue
	delivery       queue
	ingressCons    jetstream.Consumer

	// ctx is cancelled by Close; receivers and handlers derive from it.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	isClosed atomic.Bool
	active   sync.WaitGroup // running Receive calls
	advisory []*nats.Subscription
}

var (
	_ bus.Bus         = (*Bus)(nil)
	_ bus.DeadLetters = (*Bus)(nil)
)

// New creates the streams and the ingress consumer, or verifies them and
// updates those whose settings differ from cfg, and subscribes to the
// max-deliveries advisories that feed the dead-letter streams.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Bus, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsbus: jetstream: %w", err)
	}
	p := cfg.SubjectPrefix
	b := &Bus{
		cfg:            cfg,
		nc:             nc,
		js:             js,
		log:            cfg.Logger.With("component", "natsbus"),
		ingressSubject: p + ".ingress",
		ingress:        queue{name: bus.QueueIngress, stream: cfg.IngressStream, dlqStream: cfg.IngressDeadLetterStream, dlqSub: p + ".dlq.ingress"},
		delivery:       queue{name: bus.QueueDelivery, stream: cfg.DeliveryStream, dlqStream: cfg.DeliveryDeadLetterStream, dlqSub: p + ".dlq.delivery"},
	}
	streams := []jetstream.StreamConfig{
		b.streamConfig(cfg.IngressStream, b.ingressSubject, jetstream.WorkQueuePolicy),
		b.streamConfig(cfg.DeliveryStream, p+".delivery.*", jetstream.InterestPolicy),
		b.streamConfig(cfg.IngressDeadLetterStream, b.ingress.dlqSub, jetstream.LimitsPolicy),
		b.streamConfig(cfg.DeliveryDeadLetterStream, b.delivery.dlqSub, jetstream.LimitsPolicy),
	}
	for _, sc := range streams {
		if err := b.ensureStream(ctx, sc); err != nil {
			return nil, err
		}
	}
	b.ingressCons, err = b.ensureConsumer(ctx, cfg.IngressStream, jetstream.ConsumerConfig{
		Durable:       cfg.IngressConsumer,
		FilterSubject: b.ingressSubject,
	})
	if err != nil {
		return nil, err
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	if err := b.subscribeAdvisories(); err != nil {
		b.cancel()
		return nil, err
	}
	return b, nil
}

func (b *Bus) streamConfig(name, subject string, retention jetstream.RetentionPolicy) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{subject},
		Retention:  retention,
		Storage:    jetstream.FileStorage,
		Replicas:   b.cfg.Replicas,
		Duplicates: b.cfg.DuplicateWindow,
		MaxAge:     b.cfg.MaxAge,
		Discard:    jetstream.DiscardOld,
	}
}

// ensureStream creates the stream, or updates it when the settings this
// adapter owns differ.
func (b *Bus) ensureStream(ctx context.Context, want jetstream.StreamConfig) error {
	s, err := b.js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := b.js.CreateStream(ctx, want); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("natsbus: create stream %s: %w", want.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("natsbus: stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if have.Retention != want.Retention {
		return fmt.Errorf("natsbus: stream %s has retention %s, want %s (a stream's retention cannot change; delete it or rename the topic)",
			want.Name, have.Retention, want.Retention)
	}
	if reflect.DeepEqual(have.Subjects, want.Subjects) && have.Replicas == want.Replicas && have.Duplicates == want.Duplicates &&
		have.MaxAge == want.MaxAge && have.Storage == want.Storage {
		return nil
	}
	upd := have
	upd.Subjects, upd.Replicas, upd.Duplicates, upd.MaxAge = want.Subjects, want.Replicas, want.Duplicates, want.MaxAge
	if have.Storage != want.Storage {
		return fmt.Errorf("natsbus: stream %s uses %s storage, want %s", want.Name, have.Storage, want.Storage)
	}
	if _, err := b.js.UpdateStream(ctx, upd); err != nil {
		return fmt.Errorf("natsbus: update stream %s: %w", want.Name, err)
	}
	b.log.Info("stream settings updated", "stream", want.Name)
	return nil
}

// ensureConsumer creates or updates a durable pull consumer with the
// delivery settings of the configuration.
func (b *Bus) ensureConsumer(ctx context.Context, stream string, cc jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	cc.AckPolicy = jetstream.AckExplicitPolicy
	cc.DeliverPolicy = jetstream.DeliverAllPolicy
	cc.AckWait = b.cfg.AckDeadline
	cc.MaxDeliver = b.cfg.MaxDeliveryAttempts
	cc.MaxAckPending = b.cfg.MaxAckPending
	c, err := b.js.CreateOrUpdateConsumer(ctx, stream, cc)
	if err != nil {
		return nil, fmt.Errorf("natsbus: consumer %s on stream %s: %w", cc.Durable, stream, err)
	}
	return c, nil
}

// PublishIngress publishes m on the ingress subject and returns once the
// stream has stored it (or found it a duplicate of a message stored within
// the duplicate window).
func (b *Bus) PublishIngress(ctx context.Context, m *bus.Message) error {
	if err := b.publish(ctx, b.ingressSubject, m); err != nil {
		return fmt.Errorf("natsbus: publish ingress %s: %w", m.ID, err)
	}
	return nil
}

// PublishDelivery publishes m on instance's delivery subject and returns
// once the stream has accepted it. An event for an instance without a
// consumer is accepted and dropped.
func (b *Bus) PublishDelivery(ctx context.Context, instance string, m *bus.Message) error {
	if !validName(instance) {
		return fmt.Errorf("natsbus: publish delivery: instance %q must be 1-64 characters of [A-Za-z0-9_-]", instance)
	}
	if err := b.publish(ctx, b.deliverySubject(instance), m); err != nil {
		return fmt.Errorf("natsbus: publish delivery %s to %s: %w", m.ID, instance, err)
	}
	return nil
}

func (b *Bus) deliverySubject(instance string) string {
	return b.cfg.SubjectPrefix + ".delivery." + instance
}

func (b *Bus) publish(ctx context.Context, subject string, m *bus.Message) error {
	msg, err := b.natsMsg(subject, m)
	if err != nil {
		return err
	}
	_, err = b.js.PublishMsg(ctx, msg)
	return err
}

// natsMsg builds the JetStream message of m on subject.
func (b *Bus) natsMsg(subject string, m *bus.Message) (*nats.Msg, error) {
	if b.isClosed.Load() {
		return nil, bus.ErrClosed
	}
	if m.ID == "" {
		return nil, errors.New("message id is empty")
	}
	if !validHeaderValue(m.ID) {
		return nil, errors.New("message id contains a line break")
	}
	h := make(nats.Header, len(m.Attributes)+2)
	h[jetstream.MsgIDHeader] = []string{m.ID}
	if m.OrderingKey != "" {
		if !validHeaderValue(m.OrderingKey) {
			return nil, errors.New("ordering key contains a line break")
		}
		h[hdrOrderingKey] = []string{m.OrderingKey}
	}
	for k, v := range m.Attributes {
		if err := checkAttribute(k, v); err != nil {
			return nil, err
		}
		h[k] = []string{v}
	}
	return &nats.Msg{Subject: subject, Header: h, Data: m.Data}, nil
}

// PublishDeliveries publishes delivery events without waiting for each
// acknowledgement in turn: they go out in order on one connection, and it
// returns once JetStream acknowledged all of them (or the first error).
func (b *Bus) PublishDeliveries(ctx context.Context, ds []bus.Delivery) error {
	// When too many publishes are in flight, wait (up to the context's
	// deadline) rather than fail.
	stall := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		stall = max(time.Until(dl), time.Millisecond)
	}
	futures := make([]jetstream.PubAckFuture, 0, len(ds))
	for _, d := range ds {
		if !validName(d.Instance) {
			return fmt.Errorf("natsbus: publish delivery: instance %q must be 1-64 characters of [A-Za-z0-9_-]", d.Instance)
		}
		msg, err := b.natsMsg(b.deliverySubject(d.Instance), d.Message)
		if err != nil {
			return fmt.Errorf("natsbus: publish delivery %s to %s: %w", d.Message.ID, d.Instance, err)
		}
		f, err := b.js.PublishMsgAsync(msg, jetstream.WithStallWait(stall))
		if err != nil {
			return fmt.Errorf("natsbus: publish delivery %s to %s: %w", d.Message.ID, d.Instance, err)
		}
		futures = append(futures, f)
	}
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("natsbus: publish delivery %s to %s: %w", ds[i].Message.ID, ds[i].Instance, err)
		case <-ctx.Done():
			return fmt.Errorf("natsbus: publish deliveries: %w", ctx.Err())
		}
	}
	return nil
}

func checkAttribute(k, v string) error {
	if k == "" || strings.ContainsAny(k, ": \t\r\n") {
		return fmt.Errorf("attribute key %q is empty or holds a colon, space or line break", k)
	}
	if reservedHeader(k) {
		return fmt.Errorf("attribute key %q uses a reserved prefix (Nats-, Routing-)", k)
	}
	if !validHeaderValue(v) {
		return fmt.Errorf("attribute %q holds a line break", k)
	}
	return nil
}

func validHeaderValue(v string) bool { return !strings.ContainsAny(v, "\r\n") }

func reservedHeader(k string) bool {
	return len(k) >= 5 && strings.EqualFold(k[:5], "Nats-") || len(k) >= 8 && strings.EqualFold(k[:8], "Routing-")
}

// decode turns a received JetStream message into a bus.Message.
func decode(jm jetstream.Msg, attempt int) *bus.Message {
	h := jm.Headers()
	m := &bus.Message{Data: jm.Data(), DeliveryAttempt: attempt}
	m.ID = h.Get(hdrID)
	if m.ID == "" {
		m.ID = h.Get(jetstream.MsgIDHeader)
	}
	m.OrderingKey = h.Get(hdrOrderingKey)
	m.Attributes = attributes(h)
	return m
}

// attributes returns the attribute headers of h, or nil when there are none.
func attributes(h nats.Header) map[string]string {
	var attrs map[string]string
	for k, v := range h {
		if reservedHeader(k) || len(v) == 0 {
			continue
		}
		if attrs == nil {
			attrs = make(map[string]string, len(h))
		}
		attrs[k] = v[0]
	}
	return attrs
}

// ReceiveIngress runs h on ingress messages through the shared durable
// consumer, Concurrency handlers at once, until ctx is done (it returns nil)
// or the bus is closed (it returns bus.ErrClosed). Handlers get a context
// cancelled at that moment, and ReceiveIngress returns only after they have
// returned.
func (b *Bus) ReceiveIngress(ctx context.Context, h bus.Handler) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.active.Done()
	return b.receive(ctx, &b.ingress, func(ctx context.Context) (jetstream.Consumer, error) {
		return b.ingressCons, nil
	}, h)
}

// ReceiveDelivery runs h on the delivery events addressed to instance,
// through that instance's durable consumer (created, or updated, here). It
// behaves as ReceiveIngress otherwise.
func (b *Bus) ReceiveDelivery(ctx context.Context, instance string, h bus.Handler) error {
	if !validName(instance) {
		return fmt.Errorf("natsbus: receive delivery: instance %q must be 1-64 characters of [A-Za-z0-9_-]", instance)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.active.Done()
	return b.receive(ctx, &b.delivery, func(ctx context.Context) (jetstream.Consumer, error) {
		return b.deliveryConsumer(ctx, instance)
	}, h)
}

// PrepareDelivery creates (or updates) instance's delivery consumer without
// receiving. Events published to instance from its return on are kept for
// it (until the consumer's inactive threshold passes without a receiver);
// events published before it are dropped. A realtime instance calls it
// before it announces its presence.
func (b *Bus) PrepareDelivery(ctx context.Context, instance string) error {
	if !validName(instance) {
		return fmt.Errorf("natsbus: prepare delivery: instance %q must be 1-64 characters of [A-Za-z0-9_-]", instance)
	}
	if b.isClosed.Load() {
		return bus.ErrClosed
	}
	_, err := b.deliveryConsumer(ctx, instance)
	return err
}

func (b *Bus) deliveryConsumer(ctx context.Context, instance string) (jetstream.Consumer, error) {
	return b.ensureConsumer(ctx, b.cfg.DeliveryStream, jetstream.ConsumerConfig{
		Durable:           b.cfg.DeliveryConsumerPrefix + instance,
		FilterSubject:     b.deliverySubject(instance),
		InactiveThreshold: b.cfg.DeliveryInactiveThreshold,
	})
}

// enter registers a running receiver, or fails once the bus is closed.
func (b *Bus) enter() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return bus.ErrClosed
	}
	b.active.Add(1)
	return nil
}

// receive pulls from the consumer that consumer returns and feeds a pool of
// handler goroutines. When the pull subscription ends for a reason other
// than shutdown (consumer deleted, server restarted) it asks consumer again
// and resumes.
func (b *Bus) receive(ctx context.Context, q *queue, consumer func(context.Context) (jetstream.Consumer, error), h bus.Handler) error {
	return b.receiveBatches(ctx, q, consumer, 1, func(ctx context.Context, jms []jetstream.Msg) {
		b.handle(ctx, q, jms[0], h)
	})
}

// ReceiveIngressBatch is ReceiveIngress with a BatchHandler: each worker
// hands the handler what is waiting for it (at most max messages; the
// messages of one ordering key always go to the same worker, in stream
// order), so that one store commit can cover them.
func (b *Bus) ReceiveIngressBatch(ctx context.Context, maxBatch int, h bus.BatchHandler) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.active.Done()
	maxBatch = min(max(1, maxBatch), b.cfg.MaxOutstanding)
	return b.receiveBatches(ctx, &b.ingress, func(ctx context.Context) (jetstream.Consumer, error) {
		return b.ingressCons, nil
	}, maxBatch, func(ctx context.Context, jms []jetstream.Msg) {
		ms := make([]*bus.Message, len(jms))
		metas := make([]msgMeta, len(jms))
		for i, jm := range jms {
			metas[i] = meta(jm)
			ms[i] = decode(jm, metas[i].attempt)
		}
		errs := h(ctx, ms)
		for i, jm := range jms {
			var err error
			if i < len(errs) {
				err = errs[i]
			} else {
				err = errors.New("natsbus: batch handler returned too few results")
			}
			b.settle(ctx, &b.ingress, jm, ms[i], metas[i], err)
		}
	})
}

// receiveBatches pulls from the consumer that consumer returns and feeds a
// pool of workers that call run with up to maxBatch messages each. When the
// pull subscription ends for a reason other than shutdown (consumer
// deleted, server restarted) it asks consumer again and resumes.
func (b *Bus) receiveBatches(ctx context.Context, q *queue, consumer func(context.Context) (jetstream.Consumer, error), maxBatch int, run func(context.Context, []jetstream.Msg)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(b.ctx, cancel)
	defer stop()

	// One channel per worker: the messages of one ordering key always go
	// to the same worker, so they are handled one at a time, in stream
	// order. Messages without a key go to whichever worker is free.
	// A worker's own channel holds up to maxBatch waiting messages, which
	// it takes as one batch.
	shared := make(chan jetstream.Msg)
	keyed := make([]chan jetstream.Msg, b.cfg.Concurrency)
	var workers sync.WaitGroup
	for i := range keyed {
		own, sh := make(chan jetstream.Msg, maxBatch-1), shared
		keyed[i] = own
		batch := make([]jetstream.Msg, 0, maxBatch)
		workers.Go(func() {
			for own != nil || sh != nil {
				select {
				case jm, ok := <-own:
					if !ok {
						own = nil
						continue
					}
					batch = append(batch[:0], jm)
				drain:
					for len(batch) < maxBatch {
						select {
						case jm, ok := <-own:
							if !ok {
								own = nil
								break drain
							}
							batch = append(batch, jm)
						default:
							break drain
						}
					}
					run(ctx, batch)
				case jm, ok := <-sh:
					if !ok {
						sh = nil
						continue
					}
					run(ctx, append(batch[:0], jm))
				}
			}
		})
	}
	defer workers.Wait()
	defer func() {
		close(shared)
		for _, c := range keyed {
			close(c)
		}
	}()
	work := func(jm jetstream.Msg) chan<- jetstream.Msg {
		key := jm.Headers().Get(hdrOrderingKey)
		if key == "" {
			return shared
		}
		return keyed[fnv32(key)%uint32(len(keyed))]
	}

	retry := b.cfg.MinBackoff
	for {
		err := b.pull(ctx, consumer, work)
		if ctx.Err() != nil {
			if b.ctx.Err() != nil {
				return bus.ErrClosed
			}
			return nil
		}
		if b.nc.IsClosed() {
			return fmt.Errorf("natsbus: receive %s: %w", q.name, err)
		}
		b.log.Warn("pull subscription ended, resuming", "queue", q.name, "error", err, "retry_in", retry)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			continue
		case <-t.C:
		}
		retry = min(2*retry, b.cfg.MaxBackoff)
	}
}

// fnv32 is the FNV-1a hash of s.
func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// fetchWait is how long one pull request waits on the server for messages.
// It also bounds how long a receiver takes to return after its context is
// cancelled: a pull request cannot be withdrawn, so the receiver stays to
// release (nak) whatever its last request still brings.
const fetchWait = time.Second

// pull issues pull requests, one at a time, and feeds their messages to the
// workers until ctx is done or a request fails. Every message a request
// delivers is either handed to a worker or nakked, so none waits out its ack
// deadline on a receiver that has gone.
func (b *Bus) pull(ctx context.Context, consumer func(context.Context) (jetstream.Consumer, error), work func(jetstream.Msg) chan<- jetstream.Msg) error {
	c, err := consumer(ctx)
	if err != nil {
		return err
	}
	batch := max(1, b.cfg.MaxOutstanding-b.cfg.Concurrency)
	for ctx.Err() == nil {
		res, err := c.Fetch(batch, jetstream.FetchMaxWait(fetchWait))
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		for jm := range res.Messages() {
			if ctx.Err() != nil {
				_ = jm.Nak()
				continue
			}
			select {
			case work(jm) <- jm:
			case <-ctx.Done():
				_ = jm.Nak()
			}
		}
		if err := res.Error(); err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
	}
	return ctx.Err()
}

// handle runs h on one message and settles it: ack on success; nak at once
// when the handler was interrupted by shutdown (its error wraps the
// cancelled context's error); dead-letter and terminate on a permanent error
// or on the last attempt; otherwise nak with a delay of MinBackoff doubled
// per attempt, up to MaxBackoff.
func (b *Bus) handle(ctx context.Context, q *queue, jm jetstream.Msg, h bus.Handler) {
	md := meta(jm)
	m := decode(jm, md.attempt)
	b.settle(ctx, q, jm, m, md, h(ctx, m))
}

// msgMeta is what settling a message needs of its metadata.
type msgMeta struct {
	attempt   int
	streamSeq uint64
}

func meta(jm jetstream.Msg) msgMeta {
	md := msgMeta{attempt: 1}
	if m, err := jm.Metadata(); err == nil {
		md.attempt = int(m.NumDelivered)
		md.streamSeq = m.Sequence.Stream
	}
	return md
}

// settle acks, naks or dead-letters jm according to its handler's result.
func (b *Bus) settle(ctx context.Context, q *queue, jm jetstream.Msg, m *bus.Message, md msgMeta, err error) {
	attempt, streamSeq := md.attempt, md.streamSeq
	switch {
	case err == nil:
		if aerr := jm.Ack(); aerr != nil {
			b.log.Warn("ack failed; the message will be redelivered", "queue", q.name, "id", m.ID, "error", aerr)
		}
	case ctx.Err() != nil && !errors.Is(err, bus.ErrPermanent) &&
		(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		// Interrupted by shutdown, not failed: let another instance have it
		// at once, and never dead-letter it for that.
		_ = jm.Nak()
	case errors.Is(err, bus.ErrPermanent) || attempt >= b.cfg.MaxDeliveryAttempts:
		// Not the handler's ctx: a shutdown must not lose the dead letter.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		derr := b.deadLetter(dctx, q, jm.Subject(), jm.Headers(), jm.Data(), streamSeq, err.Error(), attempt)
		cancel()
		if derr != nil {
			b.log.Error("dead-lettering failed; the message will be redelivered", "queue", q.name, "id", m.ID, "error", derr)
			_ = jm.NakWithDelay(b.backoff(attempt))
			return
		}
		if terr := jm.Term(); terr != nil {
			b.log.Warn("terminating a dead-lettered message failed", "queue", q.name, "id", m.ID, "error", terr)
		}
		b.log.Warn("message dead-lettered", "queue", q.name, "id", m.ID, "attempts", attempt, "reason", err.Error())
		b.deadLettered(q, err.Error())
	default:
		if nerr := jm.NakWithDelay(b.backoff(attempt)); nerr != nil {
			b.log.Warn("nak failed; the message will be redelivered after the ack deadline", "queue", q.name, "id", m.ID, "error", nerr)
		}
	}
}

// backoff is the redelivery delay after the given failed attempt.
func (b *Bus) backoff(attempt int) time.Duration {
	d := b.cfg.MinBackoff
	for i := 1; i < attempt && d < b.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, b.cfg.MaxBackoff)
}

// Ping reports whether the server's JetStream answers.
func (b *Bus) Ping(ctx context.Context) error {
	if b.isClosed.Load() {
		return bus.ErrClosed
	}
	if s := b.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("natsbus: ping: connection %s", s)
	}
	if _, err := b.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("natsbus: ping: %w", err)
	}
	return nil
}

// Close stops the receivers, waits for their in-flight handlers, and
// unsubscribes from the advisories. It leaves the connection open (the
// caller owns it). Closing twice is harmless.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.isClosed.Store(true)
	subs := b.advisory
	b.advisory = nil
	b.mu.Unlock()

	b.cancel()
	b.active.Wait()
	var errs []error
	for _, s := range subs {
		if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, fmt.Errorf("natsbus: unsubscribe %s: %w", s.Subject, err))
		}
	}
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
