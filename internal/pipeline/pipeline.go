// Package pipeline consumes the ingress subscription: for each accepted
// envelope it stores it (store first), looks up the recipient's presence,
// addresses a delivery event to each instance that holds a connection of
// theirs, and asks for a push when they have none. The ingress message is
// acked only when all of that succeeded.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Store stores envelopes, idempotent on id.
type Store interface {
	PutMessages(ctx context.Context, envs []*envelope.Envelope) error
}

// Presence tells which instances hold a user's connections.
type Presence interface {
	Instances(ctx context.Context, user string) ([]string, error)
}

// Bus receives ingress and publishes delivery events.
type Bus interface {
	ReceiveIngress(ctx context.Context, h bus.Handler) error
	PublishDelivery(ctx context.Context, instance string, m *bus.Message) error
}

// Notifier wakes an offline recipient's devices. Notify must not block.
type Notifier interface {
	Notify(n push.Notification)
}

// LocalDelivery hands an envelope to this instance's own connections.
type LocalDelivery interface {
	Deliver(env *envelope.Envelope)
}

// Options configures the pipeline.
type Options struct {
	// Instance is this instance's id; with Local set, delivery events for it
	// skip the bus.
	Instance       string
	Local          LocalDelivery
	Notifier       Notifier
	HandlerTimeout time.Duration
	Logger         *slog.Logger
	Metrics        *telemetry.Metrics
}

// Pipeline is the ingress consumer.
type Pipeline struct {
	o        Options
	store    Store
	presence Presence
	bus      Bus
	log      *slog.Logger
}

// New returns a pipeline.
func New(o Options, st Store, pr Presence, b Bus) *Pipeline {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.HandlerTimeout <= 0 {
		o.HandlerTimeout = 10 * time.Second
	}
	return &Pipeline{o: o, store: st, presence: pr, bus: b, log: o.Logger}
}

// Run consumes the ingress subscription until ctx is done.
func (p *Pipeline) Run(ctx context.Context) error {
	return p.bus.ReceiveIngress(ctx, p.Handle)
}

// Handle processes one ingress message. An undecodable or invalid envelope
// is a permanent failure (dead-lettered at once); a store, presence or bus
// error is returned for a retry.
func (p *Pipeline) Handle(ctx context.Context, m *bus.Message) (err error) {
	start := time.Now()
	defer func() {
		if p.o.Metrics == nil {
			return
		}
		result := "ok"
		switch {
		case err == nil:
		case isPermanent(err):
			result = "dead"
		default:
			result = "retry"
		}
		p.o.Metrics.PipelineHandled.WithLabelValues(result).Inc()
		p.o.Metrics.PipelineDuration.Observe(time.Since(start).Seconds())
	}()
	ctx, cancel := context.WithTimeout(ctx, p.o.HandlerTimeout)
	defer cancel()

	var env envelope.Envelope
	if err := envelope.Unmarshal(m.Data, &env); err != nil {
		p.log.Warn("pipeline: unprocessable ingress message", "bus_id", m.ID, "err", err)
		return fmt.Errorf("%w: %v", bus.ErrPermanent, err)
	}
	if !env.Ephemeral {
		if err := p.store.PutMessages(ctx, []*envelope.Envelope{&env}); err != nil {
			return fmt.Errorf("pipeline store %s: %w", env.ID, err)
		}
	}
	instances, err := p.presence.Instances(ctx, env.Recipient)
	if err != nil {
		return fmt.Errorf("pipeline presence %s: %w", env.ID, err)
	}
	for _, inst := range instances {
		if inst == p.o.Instance && p.o.Local != nil {
			p.o.Local.Deliver(&env)
			if p.o.Metrics != nil {
				p.o.Metrics.DeliveriesLocal.Inc()
			}
			continue
		}
		dm := &bus.Message{ID: env.ID + "." + inst, Data: m.Data, OrderingKey: env.Recipient,
			Attributes: map[string]string{bus.AttrInstance: inst}}
		if err := p.bus.PublishDelivery(ctx, inst, dm); err != nil {
			return fmt.Errorf("pipeline deliver %s to %s: %w", env.ID, inst, err)
		}
		if p.o.Metrics != nil {
			p.o.Metrics.DeliveriesPublished.Inc()
		}
	}
	if len(instances) == 0 && !env.Ephemeral && p.o.Notifier != nil {
		p.o.Notifier.Notify(push.Notification{Recipient: env.Recipient, MessageID: env.ID, Type: env.Type})
		if p.o.Metrics != nil {
			p.o.Metrics.PushRequested.Inc()
		}
	}
	return nil
}

func isPermanent(err error) bool { return errors.Is(err, bus.ErrPermanent) }
