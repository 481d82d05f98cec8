package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/bus/natsbus"
	"github.com/go-routing-service/routingservice/internal/config"
)

// openBus opens the configured engine's driver and the portable bus over
// it; the returned func closes both (and stops the embedded server).
func openBus(ctx context.Context, cfg config.Config, log *slog.Logger, onDeadLetter func(queue, reason string), onOutage func(queue string, paused bool), tp trace.TracerProvider) (*bus.Bus, func() error, error) {
	d, closeEngine, err := openDriver(ctx, cfg, log.With("bus", cfg.Bus.Type))
	if err != nil {
		return nil, nil, err
	}
	o := busOptions(cfg, log.With("bus", cfg.Bus.Type), onDeadLetter)
	o.OnOutage = onOutage
	o.TracerProvider = tp
	o.System = messagingSystem(cfg.Bus.Type)
	b := bus.New(d, o)
	return b, func() error { return errors.Join(b.Close(), closeEngine()) }, nil
}

// busOptions maps the configuration onto the portable bus's delivery policy.
func busOptions(cfg config.Config, log *slog.Logger, onDeadLetter func(queue, reason string)) bus.Options {
	return bus.Options{
		MaxDeliveryAttempts: cfg.Bus.MaxDeliveryAttempts,
		MinBackoff:          cfg.Bus.MinBackoff,
		MaxBackoff:          cfg.Bus.MaxBackoff,
		MaxOutstanding:      cfg.Bus.MaxOutstanding,
		Concurrency:         cfg.Pipeline.Concurrency,
		DeliveryConcurrency: cfg.Realtime.DeliveryConcurrency,
		PackDeliveries:      cfg.Bus.Packing(),
		Logger:              log,
		OnDeadLetter:        onDeadLetter,
	}
}

// messagingSystem names the engine in spans (messaging.system).
func messagingSystem(busType string) string {
	if busType == "pubsub" {
		return "gcp_pubsub"
	}
	return "nats"
}

// natsConfig maps the configuration onto the NATS driver's.
func natsConfig(cfg config.Config, log *slog.Logger) natsbus.Config {
	return natsbus.Config{
		SubjectPrefix:       cfg.Bus.NATS.SubjectPrefix,
		MaxDeliveryAttempts: cfg.Bus.MaxDeliveryAttempts,
		AckDeadline:         cfg.Bus.AckDeadline,
		Prefetch:            max(1, cfg.Bus.MaxOutstanding-cfg.Pipeline.Concurrency),
		MaxAckPending:       16 * cfg.Bus.MaxOutstanding,
		Replicas:            cfg.Bus.NATS.Replicas,
		DuplicateWindow:     cfg.Bus.NATS.DuplicateWindow,
		MaxAge:              cfg.Bus.NATS.MaxAge,
		Logger:              log,
	}
}

// openDriver opens the configured engine; the returned func closes what
// it opened besides the driver (connection, embedded server).
func openDriver(ctx context.Context, cfg config.Config, log *slog.Logger) (driver.Driver, func() error, error) {
	nc := natsConfig(cfg, log)
	switch cfg.Bus.Type {
	case "embedded":
		eo := natsbus.EmbeddedOptions{SyncAlways: cfg.Bus.NATS.Sync == "always", Logger: log}
		if !eo.SyncAlways {
			d, err := time.ParseDuration(cfg.Bus.NATS.Sync)
			if err != nil {
				return nil, nil, fmt.Errorf("config key bus.nats.sync: %w", err)
			}
			eo.SyncInterval = d
		}
		dir := filepath.Join(cfg.DataDir, "nats")
		srv, err := natsbus.StartEmbedded(dir, eo)
		if err != nil {
			return nil, nil, fmt.Errorf("embedded bus in %s: %w", dir, err)
		}
		conn, err := srv.Connect()
		if err != nil {
			_ = srv.Shutdown(context.Background())
			return nil, nil, fmt.Errorf("embedded bus: %w", err)
		}
		d, err := natsbus.New(ctx, conn, nc)
		if err != nil {
			conn.Close()
			_ = srv.Shutdown(context.Background())
			return nil, nil, fmt.Errorf("embedded bus: %w", natsKey(err))
		}
		log.Info("bus", "type", "embedded", "dir", dir, "sync", cfg.Bus.NATS.Sync)
		closeAll := func() error {
			conn.Close()
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		}
		return d, closeAll, nil
	case "nats":
		conn, err := natsbus.Connect(cfg.Bus.NATS.URL, cfg.Bus.NATS.CredentialsFile)
		if err != nil {
			return nil, nil, fmt.Errorf("bus (config key bus.nats.url): %w", err)
		}
		d, err := natsbus.New(ctx, conn, nc)
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("bus (nats): %w", natsKey(err))
		}
		return d, func() error { conn.Close(); return nil }, nil
	case "pubsub":
		return openPubSub(ctx, cfg, log)
	default:
		return nil, nil, fmt.Errorf("config key bus.type: unknown %q", cfg.Bus.Type)
	}
}

// natsKey names the configuration key behind a stream of another
// deployment.
func natsKey(err error) error {
	if errors.Is(err, natsbus.ErrForeignStream) {
		return fmt.Errorf("config key bus.nats.subject_prefix: %w (another deployment on this NATS server uses these stream names; give each deployment its own prefix)", err)
	}
	return err
}
