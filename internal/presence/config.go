package presence

import "time"

// Config is presence.* in config.yaml: the engine and what every engine
// shares. Each engine's own keys are a section of its own
// (presence.redis.*), kept by its package.
type Config struct {
	// Type names the engine (the engines are listed in internal/config).
	Type string `yaml:"type"`
	// TTL is how long a connection stays registered without a heartbeat.
	TTL time.Duration `yaml:"ttl"`
	// Heartbeat is how often a realtime instance refreshes its
	// connections; shorter than TTL.
	Heartbeat time.Duration `yaml:"heartbeat"`
}

// DefaultConfig is the configuration with no file: in-process presence.
func DefaultConfig() Config {
	return Config{Type: "memory", TTL: 60 * time.Second, Heartbeat: 20 * time.Second}
}

// Check reports each problem of c's keys to bad, keys relative to
// presence ("ttl"). It does not check Type: the engine list does.
func (c Config) Check(bad func(key, msg string)) {
	if c.TTL <= 0 {
		bad("ttl", "must be a positive duration")
	}
	if c.Heartbeat <= 0 {
		bad("heartbeat", "must be a positive duration")
	}
	if c.Heartbeat >= c.TTL {
		bad("heartbeat", "must be shorter than presence.ttl")
	}
}
