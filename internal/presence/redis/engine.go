package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/go-routing-service/routingservice/internal/presence"
)

// Settings are presence.redis.* in config.yaml (REDIS_PASSWORD comes from
// the environment).
type Settings struct {
	Addr      string `yaml:"addr"`
	DB        int    `yaml:"db"`
	KeyPrefix string `yaml:"key_prefix"`
	TLS       bool   `yaml:"tls"`
}

// DefaultSettings are the keys' defaults.
func DefaultSettings() Settings {
	return Settings{Addr: "127.0.0.1:6379", KeyPrefix: "routing:"}
}

// Engine is presence on Redis (presence.type redis), shared by every
// instance.
type Engine struct {
	Settings Settings
	// Password is REDIS_PASSWORD.
	Password string
}

var _ presence.Engine = Engine{}

// Shared: every instance of a deployment uses the same server.
func (Engine) Shared() bool { return true }

// Check requires an address and, with links, TLS and a password.
func (e Engine) Check(_ presence.Config, _, links bool, bad func(key, msg string)) {
	if e.Settings.Addr == "" {
		bad("redis.addr", "is required when presence.type is redis")
	}
	if !links {
		return
	}
	if !e.Settings.TLS {
		bad("redis.tls", "must be true in production")
	}
	if e.Password == "" {
		bad("REDIS_PASSWORD", "the environment variable is required with presence.type redis in production")
	}
}

// Preflight: the engine's keys name no file.
func (Engine) Preflight(func(key string, err error)) {}

// Options are the registry's options for c.
func (e Engine) Options(c presence.Config) Options {
	s := e.Settings
	return Options{Addr: s.Addr, Password: e.Password, DB: s.DB, KeyPrefix: s.KeyPrefix, TLS: s.TLS, TTL: c.TTL}
}

// Open connects to the server.
func (e Engine) Open(ctx context.Context, c presence.Config) (presence.Presence, error) {
	p, err := New(ctx, e.Options(c))
	if err != nil {
		return nil, fmt.Errorf("presence (redis %s): %w", e.Settings.Addr, err)
	}
	return p, nil
}

// Inspect pings the server and says which one answered, and how.
func (e Engine) Inspect(ctx context.Context, c presence.Config) (string, error) {
	o := e.Options(c)
	version, err := Check(ctx, o)
	if err != nil && o.TLS && errors.Is(err, context.DeadlineExceeded) {
		// A server without TLS never answers the TLS handshake.
		return "", fmt.Errorf("redis (config key presence.redis.addr; presence.redis.tls is true: does the server speak TLS?): %w", err)
	}
	if err != nil {
		return "", fmt.Errorf("redis (config key presence.redis.addr): %w", err)
	}
	var attrs []string
	if version != "" {
		attrs = append(attrs, "Redis "+version)
	}
	attrs = append(attrs, fmt.Sprintf("db %d", o.DB))
	if o.TLS {
		attrs = append(attrs, "TLS")
	}
	if o.Password != "" {
		attrs = append(attrs, "with REDIS_PASSWORD")
	}
	return "redis " + o.Addr + " (" + strings.Join(attrs, ", ") + "): PING answered", nil
}
