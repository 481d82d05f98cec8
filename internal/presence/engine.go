package presence

import "context"

// Engine is one presence engine, chosen by presence.type. Its package
// provides it with its own section of the configuration; internal/config
// lists the engines, and everything the service does with one (check its
// keys, check the files they name, open it, inspect it for `config check
// --connect`) goes through this interface.
type Engine interface {
	// Shared reports whether instances on several machines can share the
	// engine. One that cannot (in process) is refused in production
	// unless single_node is set.
	Shared() bool
	// Check reports the problems of the keys the engine needs when it is
	// chosen, keys relative to presence ("redis.addr"; an environment
	// variable by its name, in capitals). With links (production without
	// insecure_links) it also refuses links that could be read or spoofed
	// on the network, or reached without credentials.
	Check(c Config, prod, links bool, bad func(key, msg string))
	// Preflight reports the files the engine's keys name that cannot be
	// read or do not hold what they should. It reads them and nothing else.
	Preflight(bad func(key string, err error))
	// Open opens the registry.
	Open(ctx context.Context, c Config) (Presence, error)
	// Inspect reaches the engine with the settings Open uses and says
	// what it found, changing nothing.
	Inspect(ctx context.Context, c Config) (string, error)
}
