package api

import (
	"fmt"
	"slices"
	"time"
)

// Config is api.* in config.yaml: the HTTP API role's listener and what
// it accepts.
type Config struct {
	Listen             string        `yaml:"listen"`
	MaxBodyBytes       int64         `yaml:"max_body_bytes"`
	MaxPayloadBytes    int           `yaml:"max_payload_bytes"`
	IdempotencyWindow  time.Duration `yaml:"idempotency_window"`
	CORSAllowedOrigins []string      `yaml:"cors_allowed_origins"`
	// RateLimit is each user's average requests per second on /v1 (0: no
	// limit); RateBurst the requests allowed at once.
	RateLimit      float64       `yaml:"rate_limit"`
	RateBurst      int           `yaml:"rate_burst"`
	ReadTimeout    time.Duration `yaml:"read_timeout"`
	WriteTimeout   time.Duration `yaml:"write_timeout"`
	PublishTimeout time.Duration `yaml:"publish_timeout"`
	// MaxIngressBacklog is how many accepted messages may wait for the
	// pipeline before sends are refused (503, Retry-After) until it catches
	// up; 0: no limit. Read from engines that report it (NATS).
	MaxIngressBacklog int64 `yaml:"max_ingress_backlog"`
	// MaxPageBytes bounds the payload bytes of one page of GET
	// /v1/messages: the page ends early, with a cursor, before the message
	// that would pass it (a page holds at least one message).
	MaxPageBytes int `yaml:"max_page_bytes"`
	// MaxFetchesPerUser bounds the GET /v1/messages requests one user has
	// in progress on an instance at once; more answer 429 rate_limited.
	MaxFetchesPerUser int `yaml:"max_fetches_per_user"`
	// MaxBatch bounds the messages of one POST /v1/messages/batch, and
	// MaxBatchBodyBytes its body (MaxBodyBytes bounds every other body);
	// over either: 413.
	MaxBatch          int   `yaml:"max_batch"`
	MaxBatchBodyBytes int64 `yaml:"max_batch_body_bytes"`
}

// DefaultConfig is the configuration with no file.
func DefaultConfig() Config {
	return Config{
		Listen:             "127.0.0.1:8082",
		MaxBodyBytes:       128 << 10,
		MaxPayloadBytes:    64 << 10,
		IdempotencyWindow:  24 * time.Hour,
		CORSAllowedOrigins: []string{},
		RateLimit:          100,
		RateBurst:          200,
		ReadTimeout:        10 * time.Second,
		WriteTimeout:       10 * time.Second,
		PublishTimeout:     5 * time.Second,
		MaxIngressBacklog:  50000,
		MaxPageBytes:       1 << 20,
		MaxFetchesPerUser:  2,
		MaxBatch:           1000,
		MaxBatchBodyBytes:  16 << 20,
	}
}

// Check reports each problem of c's keys to bad, keys relative to api
// ("max_body_bytes"); prod is production mode.
func (c Config) Check(prod bool, bad func(key, msg string)) {
	if c.MaxBodyBytes < 1024 {
		bad("max_body_bytes", "must be at least 1024")
	}
	if c.MaxPayloadBytes < 1 || int64(c.MaxPayloadBytes) > c.MaxBodyBytes {
		bad("max_payload_bytes", "must be between 1 and api.max_body_bytes")
	}
	if c.RateLimit < 0 {
		bad("rate_limit", "must not be negative (0 turns the limit off)")
	}
	if prod && c.RateLimit == 0 {
		bad("rate_limit", "must be positive in production (0 turns the limit off)")
	}
	if c.RateLimit > 0 && c.RateBurst < 1 {
		bad("rate_burst", "must be at least 1")
	}
	if c.MaxIngressBacklog < 0 {
		bad("max_ingress_backlog", "must not be negative (0: no limit)")
	}
	if c.MaxPageBytes < 1 {
		bad("max_page_bytes", "must be at least 1 (a page holds at least one message whatever its size)")
	}
	if c.MaxFetchesPerUser < 1 {
		bad("max_fetches_per_user", "must be at least 1")
	}
	if c.MaxBatch < 1 {
		bad("max_batch", "must be at least 1")
	}
	if c.MaxBatchBodyBytes < c.MaxBodyBytes {
		bad("max_batch_body_bytes", fmt.Sprintf("must be at least api.max_body_bytes (%d): a batch of one message is as large as a send", c.MaxBodyBytes))
	}
	if c.IdempotencyWindow <= 0 {
		bad("idempotency_window", "must be positive")
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"read_timeout", c.ReadTimeout}, {"write_timeout", c.WriteTimeout}, {"publish_timeout", c.PublishTimeout}} {
		if d.v <= 0 {
			bad(d.key, "must be a positive duration")
		}
	}
	if prod && slices.Contains(c.CORSAllowedOrigins, "*") {
		bad("cors_allowed_origins", "wildcard \"*\" is refused in production")
	}
}
