package route

import "time"

// Config is pipeline.* in config.yaml: how the pipeline role routes
// (Options takes them with the keys of the other parts it needs).
type Config struct {
	// Concurrency is the number of handlers of the ingress consumer (and
	// of the delivery subscription unless realtime.delivery_concurrency
	// is set).
	Concurrency    int           `yaml:"concurrency"`
	HandlerTimeout time.Duration `yaml:"handler_timeout"`
	// RerouteAfter is how long a stored message may wait for its routing
	// event before the sweep of unrouted messages routes it.
	RerouteAfter time.Duration `yaml:"reroute_after"`
	// LocalHandoff routes the messages this instance's API stored in
	// process when the instance runs the pipeline too, rather than over the
	// ingress topic (which still carries what the hand-off cannot take).
	LocalHandoff bool `yaml:"local_handoff"`
}

// DefaultConfig is the configuration with no file.
func DefaultConfig() Config {
	return Config{Concurrency: 64, HandlerTimeout: 10 * time.Second, RerouteAfter: 30 * time.Second, LocalHandoff: true}
}

// Check reports each problem of c's keys to bad, keys relative to
// pipeline ("reroute_after").
func (c Config) Check(bad func(key, msg string)) {
	if c.Concurrency < 1 {
		bad("concurrency", "must be at least 1")
	}
	if c.HandlerTimeout <= 0 {
		bad("handler_timeout", "must be a positive duration")
	}
	if c.RerouteAfter <= 0 {
		bad("reroute_after", "must be a positive duration")
	}
}

// MarkDelay is how long the pipeline role holds a batch's routed marks
// back (Options.MarkDelay): DefaultMarkDelay, or a quarter of
// RerouteAfter when that is shorter, so that the sweep never takes a
// message whose mark is only held back for one left unrouted.
func (c Config) MarkDelay() time.Duration { return min(DefaultMarkDelay, c.RerouteAfter/4) }

// HandoffQueue is Options.HandoffQueue on an instance that both accepts
// messages and routes them: DefaultHandoffQueue with LocalHandoff, else 0
// (every routing event over the ingress topic).
func (c Config) HandoffQueue() int {
	if c.LocalHandoff {
		return DefaultHandoffQueue
	}
	return 0
}
