package app

import (
	"context"
	"fmt"
	"log/slog"

	"google.golang.org/api/option"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
	"github.com/go-routing-service/routingservice/internal/config"
)

// openPubSub opens the Google Cloud Pub/Sub bus. PUBSUB_EMULATOR_HOST,
// when set, points the client at an emulator.
func openPubSub(ctx context.Context, cfg config.Config, log *slog.Logger) (driver.Driver, func() error, error) {
	pc, opts := pubsubConfig(cfg, log)
	d, err := gcppubsub.New(ctx, pc, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("bus (pubsub, project %s; config keys bus.* and bus.pubsub.*): %w", pc.ProjectID, err)
	}
	return d, func() error { return nil }, nil
}

// pubsubConfig maps the configuration onto the Pub/Sub driver's settings
// and client options (endpoint, credentials).
func pubsubConfig(cfg config.Config, log *slog.Logger) (gcppubsub.Config, []option.ClientOption) {
	ps := cfg.Bus.PubSub
	var opts []option.ClientOption
	if ps.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(ps.Endpoint))
	}
	if ps.CredentialsFile != "" {
		opts = append(opts, option.WithAuthCredentialsFile(option.ServiceAccount, ps.CredentialsFile))
	}
	return gcppubsub.Config{
		ProjectID:                      ps.ProjectID,
		IngressTopic:                   cfg.Bus.IngressTopic,
		IngressSubscription:            cfg.Bus.IngressSubscription,
		DeliveryTopic:                  cfg.Bus.DeliveryTopic,
		DeliverySubscriptionPrefix:     ps.DeliverySubscriptionPrefix,
		DeliverySubscriptionExpiration: ps.DeliverySubscriptionExpiration,
		LegacySharedDelivery:           ps.LegacySharedDelivery,
		IngressDeadLetterTopic:         cfg.Bus.IngressDeadLetterTopic,
		DeliveryDeadLetterTopic:        cfg.Bus.DeliveryDeadLetterTopic,
		MaxDeliveryAttempts:            cfg.Bus.MaxDeliveryAttempts,
		AckDeadline:                    cfg.Bus.AckDeadline,
		MinBackoff:                     cfg.Bus.MinBackoff,
		MaxBackoff:                     cfg.Bus.MaxBackoff,
		MaxOutstanding:                 cfg.Bus.MaxOutstanding,
		IngressPublishTimeout:          cfg.API.PublishTimeout,
		Logger:                         log,
	}, opts
}
