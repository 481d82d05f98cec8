package realtime

import (
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"
	"time"
)

// Config is realtime.* in config.yaml: the WebSocket role's listener,
// who may connect, and the limits of a connection.
type Config struct {
	// Listen is the WebSocket listener's address; empty serves
	// /v1/connect on the API listener instead (one port, for a single
	// load-balancer port; the instance needs the api role too).
	Listen string `yaml:"listen"`
	// AllowedOrigins are origin patterns (scheme://host[:port], with
	// path.Match wildcards; "*" for any) accepted besides the same host.
	AllowedOrigins []string      `yaml:"allowed_origins"`
	MaxFrameBytes  int64         `yaml:"max_frame_bytes"`
	PingInterval   time.Duration `yaml:"ping_interval"`
	PongTimeout    time.Duration `yaml:"pong_timeout"`
	WriteTimeout   time.Duration `yaml:"write_timeout"`
	// SendBufferBytes caps what a session holds to write: the bytes of
	// its frames queued or being written and of the backlog page it
	// holds; SendQueue caps its queued live frames. A session past
	// either is closed with 1013 (its messages stay stored).
	SendQueue       int   `yaml:"send_queue"`
	SendBufferBytes int64 `yaml:"send_buffer_bytes"`
	BacklogPage     int   `yaml:"backlog_page"`
	MaxConnsPerUser int   `yaml:"max_conns_per_user"`
	// DeliveryConcurrency is the number of handlers of this instance's
	// delivery subscription (0: pipeline.concurrency, which sized them
	// before this key).
	DeliveryConcurrency int `yaml:"delivery_concurrency"`
	// MaxSendsInFlight bounds the send frames of one connection not
	// answered yet: past it the server reads nothing more from the
	// connection until it has answered some (backpressure;
	// DefaultMaxSendsInFlight when zero).
	MaxSendsInFlight int `yaml:"max_sends_in_flight"`
	// AllowedHosts are the host names (no port) a browser may reach the
	// WebSocket endpoint by: an upgrade with an Origin header and another
	// Host is refused, so a DNS-rebound name cannot pass as same-origin.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// MaxConns caps this instance's connections; MaxConnsPerIP those of
	// one client address, an IPv6 client being its /64 (0, the default:
	// no per-address cap, since carrier-grade NAT puts thousands of
	// people behind one address).
	MaxConns      int `yaml:"max_conns"`
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
	// Connection attempts per second (average) and at once: per client
	// address those without a valid token (none, or one that fails
	// verification), per user those with one; over them: 429 with
	// Retry-After (a token that fails verification still gets 401). An
	// attempt with a valid token never spends its address's budget.
	ConnectRatePerIP    float64 `yaml:"connect_rate_per_ip"`
	ConnectBurstPerIP   int     `yaml:"connect_burst_per_ip"`
	ConnectRatePerUser  float64 `yaml:"connect_rate_per_user"`
	ConnectBurstPerUser int     `yaml:"connect_burst_per_user"`
	// Client frames but sends (acks) per second (average) and at once,
	// per connection; over them the frame is answered with a rate_limited
	// error and not applied. Sends count against the per-user limit of
	// AcceptSends instead.
	AckRate  float64 `yaml:"ack_rate"`
	AckBurst int     `yaml:"ack_burst"`
	// TrustedProxies are the networks (CIDR) of load balancers whose
	// X-Forwarded-For names the client address; other peers are taken as
	// the client. Alone, the client is the first entry from the right
	// outside these networks.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// TrustedProxyHops is how many X-Forwarded-For entries, counted from
	// the right, the load balancers in front write (2 behind Google's
	// external Application Load Balancer, 1 behind nginx or an AWS ALB, 0
	// for direct connections): the client is the entry that many from the
	// right. With TrustedProxies too, only those peers' header is read.
	TrustedProxyHops  int           `yaml:"trusted_proxy_hops"`
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
}

// DefaultConfig is the configuration with no file.
func DefaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:8085",
		AllowedOrigins:  []string{},
		MaxFrameBytes:   128 << 10,
		PingInterval:    25 * time.Second,
		PongTimeout:     10 * time.Second,
		WriteTimeout:    10 * time.Second,
		SendQueue:       1024,
		SendBufferBytes: 1 << 20,
		BacklogPage:     100,
		MaxConnsPerUser: 16,
		AllowedHosts:    []string{"localhost", "127.0.0.1", "::1"},

		MaxSendsInFlight: 64,

		MaxConns:            10000,
		MaxConnsPerIP:       0,
		ConnectRatePerIP:    10,
		ConnectBurstPerIP:   50,
		ConnectRatePerUser:  1,
		ConnectBurstPerUser: 20,
		AckRate:             50,
		AckBurst:            100,
		TrustedProxies:      []string{},
		ReadHeaderTimeout:   10 * time.Second,
		IdleTimeout:         2 * time.Minute,
	}
}

// MaxTrustedProxyHops bounds realtime.trusted_proxy_hops: more load
// balancers than that in a row is a mistake, not a setup.
const MaxTrustedProxyHops = 8

// Check reports each problem of c's keys to bad, keys relative to
// realtime ("allowed_origins[0]"); prod is production mode.
func (c Config) Check(prod bool, bad func(key, msg string)) {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"ping_interval", c.PingInterval}, {"pong_timeout", c.PongTimeout}, {"write_timeout", c.WriteTimeout},
		{"read_header_timeout", c.ReadHeaderTimeout}, {"idle_timeout", c.IdleTimeout}} {
		if d.v <= 0 {
			bad(d.key, "must be a positive duration")
		}
	}
	if c.MaxFrameBytes < 1024 {
		bad("max_frame_bytes", "must be at least 1024")
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"send_queue", c.SendQueue}, {"backlog_page", c.BacklogPage}, {"max_conns_per_user", c.MaxConnsPerUser},
		{"max_sends_in_flight", c.MaxSendsInFlight}, {"max_conns", c.MaxConns}} {
		if n.v < 1 {
			bad(n.key, "must be at least 1")
		}
	}
	if c.BacklogPage > 500 {
		bad("backlog_page", "must be at most 500")
	}
	for i, o := range c.AllowedOrigins {
		if o == "*" {
			if prod {
				bad("allowed_origins", "wildcard \"*\" is refused in production")
			}
			continue
		}
		if err := checkOrigin(o); err != nil {
			bad(fmt.Sprintf("allowed_origins[%d]", i), err.Error())
		}
	}
	for i, h := range c.AllowedHosts {
		switch {
		case h == "*" && prod:
			bad("allowed_hosts", "wildcard \"*\" is refused in production")
		case h == "" || strings.ContainsAny(h, "/:[]") && net.ParseIP(h) == nil:
			bad(fmt.Sprintf("allowed_hosts[%d]", i), fmt.Sprintf("must be a host name or address without scheme or port, got %q", h))
		}
	}
	for i, p := range c.TrustedProxies {
		if _, err := netip.ParsePrefix(p); err != nil {
			bad(fmt.Sprintf("trusted_proxies[%d]", i), fmt.Sprintf("must be a network in CIDR notation, got %q", p))
		}
	}
	if h := c.TrustedProxyHops; h < 0 || h > MaxTrustedProxyHops {
		bad("trusted_proxy_hops", fmt.Sprintf("must be from 0 (clients connect directly) to %d, the X-Forwarded-For entries the load balancers in front append; got %d", MaxTrustedProxyHops, h))
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"max_conns_per_ip", c.MaxConnsPerIP}, {"delivery_concurrency", c.DeliveryConcurrency}} {
		if n.v < 0 {
			bad(n.key, "must not be negative (0: no limit)")
		}
	}
	for _, r := range []struct {
		rateKey, burstKey string
		rate              float64
		burst             int
	}{
		{"connect_rate_per_ip", "connect_burst_per_ip", c.ConnectRatePerIP, c.ConnectBurstPerIP},
		{"connect_rate_per_user", "connect_burst_per_user", c.ConnectRatePerUser, c.ConnectBurstPerUser},
		{"ack_rate", "ack_burst", c.AckRate, c.AckBurst},
	} {
		if r.rate < 0 {
			bad(r.rateKey, "must not be negative (0 turns the limit off)")
		}
		if r.rate > 0 && r.burst < 1 {
			bad(r.burstKey, "must be at least 1")
		}
	}
}

// trustedPrefixes parses TrustedProxies (Check refused what does not
// parse).
func (c Config) trustedPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(c.TrustedProxies))
	for _, s := range c.TrustedProxies {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// checkOrigin reports whether origin is scheme://host[:port] (http or https,
// the host possibly with * wildcards): the WebSocket library's origin
// patterns match it against the whole Origin header, scheme included.
func checkOrigin(origin string) error {
	scheme, host, ok := strings.Cut(origin, "://")
	if !ok || (scheme != "http" && scheme != "https") || host == "" || strings.ContainsAny(host, "/?#@") {
		return fmt.Errorf("must be an origin scheme://host[:port] (http or https), got %q", origin)
	}
	if _, err := path.Match(origin, ""); err != nil {
		return fmt.Errorf("bad wildcard in %q: %v", origin, err)
	}
	return nil
}
