package telemetry

import (
	"fmt"
	"net/url"
)

// Config is telemetry.* in config.yaml: traces (metrics are always on,
// on the operations listener).
type Config struct {
	// Traces is off or otlp (spans exported over OTLP, configured by the
	// standard OTEL_* environment variables).
	Traces string `yaml:"traces"`
	// OTLPEndpoint is the collector's URL when neither
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT nor OTEL_EXPORTER_OTLP_ENDPOINT
	// is set.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// SampleRatio is the ratio of traces sampled when OTEL_TRACES_SAMPLER
	// is not set: new traces, and requests carrying a caller's traceparent
	// unless TrustRemoteSampling is set. Spans under a parent this service
	// made (across the bus too) follow their parent's decision.
	SampleRatio float64 `yaml:"sample_ratio"`
	// TrustRemoteSampling follows the sampled flag of a caller's
	// traceparent. Off (the default), a client cannot make the service
	// trace its requests; turn it on only when every caller is trusted.
	TrustRemoteSampling bool `yaml:"trust_remote_sampling"`
}

// DefaultConfig is the configuration with no file: no traces.
func DefaultConfig() Config { return Config{Traces: "off", SampleRatio: 1} }

// Check reports each problem of c's keys to bad, keys relative to
// telemetry ("sample_ratio").
func (c Config) Check(bad func(key, msg string)) {
	if c.Traces != "off" && c.Traces != "otlp" {
		bad("traces", fmt.Sprintf("must be off or otlp, got %q", c.Traces))
	}
	if e := c.OTLPEndpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("otlp_endpoint", fmt.Sprintf("must be an http:// or https:// URL (e.g. http://collector:4318), got %q", e))
		}
	}
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		bad("sample_ratio", "must be between 0 and 1")
	}
}
