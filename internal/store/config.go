package store

import "time"

// Config is store.* in config.yaml: the engine, and what every engine
// shares: how long messages are kept, how writes are grouped and how much
// may wait. Each engine's own keys (store.sqlite_path, store.postgres_*)
// are kept by its package.
type Config struct {
	// Type names the engine (the engines are listed in internal/config).
	Type          string        `yaml:"type"`
	Retention     time.Duration `yaml:"retention"`
	SweepInterval time.Duration `yaml:"sweep_interval"`
	MaxBatch      int           `yaml:"max_batch"`
	MaxConns      int           `yaml:"max_conns"`
	// MaxPendingPerRecipient caps a recipient's pending (stored, not yet
	// acknowledged) messages: sends to a recipient at the cap are refused
	// with 429 recipient_queue_full.
	MaxPendingPerRecipient int `yaml:"max_pending_per_recipient"`
	// MaxPendingPerSender and MaxPendingBytesPerSender cap what one sender
	// has pending over all its recipients (messages; payload bytes): sends
	// past either are refused with 429 sender_quota_exceeded.
	MaxPendingPerSender      int   `yaml:"max_pending_per_sender"`
	MaxPendingBytesPerSender int64 `yaml:"max_pending_bytes_per_sender"`
}

// DefaultConfig is the configuration with no file: SQLite.
func DefaultConfig() Config {
	return Config{
		Type:                     "sqlite",
		Retention:                30 * 24 * time.Hour,
		SweepInterval:            time.Hour,
		MaxBatch:                 256,
		MaxConns:                 16,
		MaxPendingPerRecipient:   10000,
		MaxPendingPerSender:      100000,
		MaxPendingBytesPerSender: 1 << 30,
	}
}

// Check reports each problem of c's keys to bad, keys relative to store
// ("retention"). It does not check Type: the engine list does.
func (c Config) Check(bad func(key, msg string)) {
	if c.Retention <= 0 {
		bad("retention", "must be a positive duration")
	}
	if c.SweepInterval <= 0 {
		bad("sweep_interval", "must be a positive duration")
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"max_batch", c.MaxBatch}, {"max_conns", c.MaxConns}, {"max_pending_per_recipient", c.MaxPendingPerRecipient},
		{"max_pending_per_sender", c.MaxPendingPerSender}} {
		if n.v < 1 {
			bad(n.key, "must be at least 1")
		}
	}
}
