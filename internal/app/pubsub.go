package app

import (
	"context"
	"errors"
	"log/slog"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
)

func openPubSub(ctx context.Context, cfg config.Config, log *slog.Logger) (bus.Bus, func() error, error) {
	return nil, nil, errors.New("config key bus.type: pubsub is not wired yet")
}
