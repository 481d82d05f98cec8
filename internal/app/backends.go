package app

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/presence/memory"
	redispresence "github.com/go-routing-service/routingservice/internal/presence/redis"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/postgres"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
)

// postgresOptions maps the configuration onto the PostgreSQL store's.
func postgresOptions(cfg config.Config, log *slog.Logger) postgres.Options {
	return postgres.Options{
		MaxBatch: cfg.Store.MaxBatch,
		MaxConns: int32(cfg.Store.MaxConns),
		Schema:   cfg.Store.PostgresSchema,
		Logger:   log.With("store", "postgres"),
		Vacuum: postgres.VacuumOptions{
			Interval: cfg.Store.PostgresVacuumInterval,
			DeadRows: cfg.Store.PostgresVacuumDeadRows,
		},
	}
}

// redisOptions maps the configuration onto the Redis presence's.
func redisOptions(cfg config.Config) redispresence.Options {
	return redispresence.Options{
		Addr:      cfg.Presence.Redis.Addr,
		Password:  cfg.RedisPassword,
		DB:        cfg.Presence.Redis.DB,
		KeyPrefix: cfg.Presence.Redis.KeyPrefix,
		TLS:       cfg.Presence.Redis.TLS,
		TTL:       cfg.Presence.TTL,
	}
}

func openStore(ctx context.Context, cfg config.Config, log *slog.Logger) (store.Store, error) {
	switch cfg.Store.Type {
	case "postgres":
		s, err := postgres.Open(ctx, cfg.DatabaseURL, postgresOptions(cfg, log))
		if err != nil {
			return nil, fmt.Errorf("store (postgres, DATABASE_URL): %w", err)
		}
		return s, nil
	default:
		s, err := sqlite.Open(ctx, cfg.Store.SQLitePath, sqlite.Options{
			MaxBatch: cfg.Store.MaxBatch,
			Logger:   log.With("store", "sqlite"),
		})
		if err != nil {
			return nil, fmt.Errorf("store (sqlite %s): %w", cfg.Store.SQLitePath, err)
		}
		log.Info("store", "type", "sqlite", "path", cfg.Store.SQLitePath)
		return s, nil
	}
}

func openPresence(ctx context.Context, cfg config.Config) (presence.Presence, error) {
	switch cfg.Presence.Type {
	case "redis":
		p, err := redispresence.New(ctx, redisOptions(cfg))
		if err != nil {
			return nil, fmt.Errorf("presence (redis %s): %w", cfg.Presence.Redis.Addr, err)
		}
		return p, nil
	default:
		return memory.New(cfg.Presence.TTL), nil
	}
}
