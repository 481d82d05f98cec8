package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/natsbus"
	"github.com/go-routing-service/routingservice/internal/config"
)

// openBus opens the configured bus; the returned func closes it (and stops
// the embedded server).
func openBus(ctx context.Context, cfg config.Config, log *slog.Logger, onDeadLetter func(queue, reason string)) (bus.Bus, func() error, error) {
	nc := natsbus.FromConfig(cfg.Bus)
	nc.OnDeadLetter = onDeadLetter
	nc.SubjectPrefix = cfg.Bus.NATS.SubjectPrefix
	nc.Concurrency = cfg.Pipeline.Concurrency
	nc.Logger = log.With("bus", cfg.Bus.Type)
	switch cfg.Bus.Type {
	case "embedded":
		eo := natsbus.EmbeddedOptions{SyncAlways: cfg.Bus.NATS.Sync == "always"}
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
		b, err := natsbus.New(ctx, conn, nc)
		if err != nil {
			conn.Close()
			_ = srv.Shutdown(context.Background())
			return nil, nil, fmt.Errorf("embedded bus: %w", err)
		}
		log.Info("bus", "type", "embedded", "dir", dir, "sync", cfg.Bus.NATS.Sync)
		closeAll := func() error {
			err := b.Close()
			conn.Close()
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return errors.Join(err, srv.Shutdown(sctx))
		}
		return b, closeAll, nil
	case "nats":
		conn, err := natsbus.Connect(cfg.Bus.NATS.URL, cfg.Bus.NATS.CredentialsFile)
		if err != nil {
			return nil, nil, fmt.Errorf("bus (config key bus.nats.url): %w", err)
		}
		b, err := natsbus.New(ctx, conn, nc)
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("bus (nats): %w", err)
		}
		return b, func() error { err := b.Close(); conn.Close(); return err }, nil
	case "pubsub":
		return openPubSub(ctx, cfg, log, onDeadLetter)
	default:
		return nil, nil, fmt.Errorf("config key bus.type: unknown %q", cfg.Bus.Type)
	}
}
