package store

import (
	"context"
	"log/slog"

	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Engine is one store engine, chosen by store.type. Its package provides
// it with its own keys; internal/config lists the engines, and everything
// the service does with one (check its keys, check the files they name,
// open it, inspect it for `config check --connect`) goes through this
// interface.
type Engine interface {
	// Shared reports whether instances on several machines can share the
	// engine. One that cannot (a file) is refused in production unless
	// single_node is set.
	Shared() bool
	// Check reports the problems of the keys the engine needs when it is
	// chosen, keys relative to store ("sqlite_path"; an environment
	// variable by its name, in capitals). With links (production without
	// insecure_links) it also refuses links that could be read or spoofed
	// on the network.
	Check(c Config, prod, links bool, bad func(key, msg string))
	// Preflight reports the files the engine's keys name that cannot be
	// read or do not hold what they should. It reads them and nothing else.
	Preflight(bad func(key string, err error))
	// Open opens the store (creating or migrating what it needs).
	Open(ctx context.Context, c Config, env Env) (Store, error)
	// Inspect reaches the engine with the settings Open uses and says what
	// it found and what Open would create or migrate, changing nothing.
	Inspect(ctx context.Context, c Config, env Env) (string, error)
}

// Env is what an engine gets from the rest of the instance.
type Env struct {
	// DataDir is the data dir, which serve creates at start.
	DataDir string
	Logger  *slog.Logger
	// Metrics, when set, receives what the engine exports of itself.
	Metrics *telemetry.Metrics
}
