package app

import (
	"context"
	"log/slog"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// pushRole wakes offline recipients' devices through the configured providers.
type pushRole struct {
	d        *push.Dispatcher
	validate push.ValidateOptions
	vapidPub string
}

func newPushRole(ctx context.Context, cfg config.Config, st store.Store, m *telemetry.Metrics, log *slog.Logger) (*pushRole, error) {
	var senders []push.Sender
	d := push.NewDispatcher(st, senders, push.DispatcherOptions{
		CoalesceWindow: cfg.Push.CoalesceWindow,
		Concurrency:    cfg.Push.Concurrency,
		Timeout:        cfg.Push.Timeout,
		Logger:         log.With("role", "push"),
		Registerer:     m.Registry,
	})
	return &pushRole{d: d}, nil
}

func (p *pushRole) Notify(n push.Notification)          { p.d.Notify(n) }
func (p *pushRole) run(ctx context.Context) error       { return p.d.Run(ctx) }
func (p *pushRole) validateTarget(t store.Target) error { return p.validate.Validate(t) }
func (p *pushRole) vapidPublicKey() string              { return p.vapidPub }
