package push

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is push.* in config.yaml: how offline recipients' devices are
// woken, and through which providers.
type Config struct {
	CoalesceWindow    time.Duration `yaml:"coalesce_window"`
	Concurrency       int           `yaml:"concurrency"`
	Timeout           time.Duration `yaml:"timeout"`
	MaxRetries        int           `yaml:"max_retries"`
	MaxTargetsPerUser int           `yaml:"max_targets_per_user"`
	// UnackedAfter is how long a message routed to a live connection may
	// stay unacknowledged before its recipient gets a push anyway (0: never).
	UnackedAfter time.Duration `yaml:"unacked_after"`
	// AllowedPorts are the ports push egress may connect to on public
	// addresses (default [443]); every other port is refused when the
	// connection is made. APNs's alternative port is 2197. Loopback
	// stand-ins (push.webpush.allow_local_endpoints) take any port.
	AllowedPorts []int `yaml:"allowed_ports"`
	// CAFile is a PEM bundle of extra root certificates trusted when
	// talking to push providers (besides the system roots).
	CAFile  string  `yaml:"ca_file"`
	FCM     FCM     `yaml:"fcm"`
	APNs    APNs    `yaml:"apns"`
	WebPush WebPush `yaml:"webpush"`
}

// FCM configures Firebase Cloud Messaging (HTTP v1).
type FCM struct {
	Enabled         bool   `yaml:"enabled"`
	ProjectID       string `yaml:"project_id"`
	CredentialsFile string `yaml:"credentials_file"`
	Endpoint        string `yaml:"endpoint"`
	TokenURL        string `yaml:"token_url"`
}

// APNs configures Apple Push Notification service.
type APNs struct {
	Enabled  bool   `yaml:"enabled"`
	KeyFile  string `yaml:"key_file"`
	KeyID    string `yaml:"key_id"`
	TeamID   string `yaml:"team_id"`
	Topic    string `yaml:"topic"`
	Endpoint string `yaml:"endpoint"`
	PushType string `yaml:"push_type"`
	Priority int    `yaml:"priority"`
}

// WebPush configures Web Push (VAPID).
type WebPush struct {
	Enabled bool   `yaml:"enabled"`
	Subject string `yaml:"subject"`
	// VAPID keys (base64url); in local mode, generated into the data dir when empty.
	VAPIDPublicKey      string        `yaml:"vapid_public_key"`
	VAPIDPrivateKeyFile string        `yaml:"vapid_private_key_file"`
	TTL                 time.Duration `yaml:"ttl"`
	Urgency             string        `yaml:"urgency"`
	// AllowLocalEndpoints accepts subscriptions whose endpoint is on
	// localhost or a loopback address, and lets push egress (Web Push, FCM
	// and APNs alike) connect to loopback addresses: for local setups with
	// stand-in push services only; refused in production. Every other
	// address that is not public unicast is refused either way.
	AllowLocalEndpoints bool `yaml:"allow_local_endpoints"`
}

// DefaultConfig is the configuration with no file: Web Push alone.
func DefaultConfig() Config {
	return Config{
		CoalesceWindow:    5 * time.Second,
		Concurrency:       16,
		Timeout:           10 * time.Second,
		MaxRetries:        3,
		MaxTargetsPerUser: 10,
		UnackedAfter:      30 * time.Second,
		AllowedPorts:      []int{443},
		APNs:              APNs{Endpoint: "https://api.push.apple.com", PushType: "background", Priority: 5},
		WebPush:           WebPush{Enabled: true, Subject: "mailto:ops@example.com", TTL: 24 * time.Hour, Urgency: "high"},
		FCM:               FCM{Endpoint: "https://fcm.googleapis.com"},
	}
}

// Check reports each problem of c's keys to bad, keys relative to push
// ("webpush.urgency"); prod is production mode.
func (c Config) Check(prod bool, bad func(key, msg string)) {
	if c.UnackedAfter < 0 {
		bad("unacked_after", "must not be negative (0 turns it off)")
	}
	if c.Timeout <= 0 {
		bad("timeout", "must be a positive duration")
	}
	if c.CoalesceWindow <= 0 {
		bad("coalesce_window", "must be a positive duration")
	}
	if c.Concurrency < 1 {
		bad("concurrency", "must be at least 1")
	}
	if c.MaxTargetsPerUser < 1 {
		bad("max_targets_per_user", "must be at least 1")
	}
	if c.MaxRetries < 0 || c.MaxRetries > 10 {
		bad("max_retries", "must be between 0 and 10")
	}
	if wp := c.WebPush; wp.Enabled {
		if wp.AllowLocalEndpoints && prod {
			bad("webpush.allow_local_endpoints", "is refused in production")
		}
		if wp.VAPIDPrivateKeyFile == "" && prod {
			bad("webpush.vapid_private_key_file", "is required in production (local mode generates a key pair into the data dir)")
		}
		switch wp.Urgency {
		case "very-low", "low", "normal", "high":
		default:
			bad("webpush.urgency", fmt.Sprintf("must be very-low, low, normal or high, got %q", wp.Urgency))
		}
		if !strings.HasPrefix(wp.Subject, "mailto:") && !strings.HasPrefix(wp.Subject, "https://") {
			bad("webpush.subject", "must be a mailto: or https: contact")
		}
	}
	if c.FCM.Enabled && c.FCM.CredentialsFile == "" {
		bad("fcm.credentials_file", "is required when push.fcm.enabled is true")
	}
	if a := c.APNs; a.Enabled {
		for _, k := range []struct{ key, v string }{{"apns.key_file", a.KeyFile}, {"apns.key_id", a.KeyID}, {"apns.team_id", a.TeamID}, {"apns.topic", a.Topic}} {
			if k.v == "" {
				bad(k.key, "is required when push.apns.enabled is true")
			}
		}
		if a.PushType != "background" && a.PushType != "alert" {
			bad("apns.push_type", fmt.Sprintf("must be background or alert, got %q", a.PushType))
		}
		if a.Priority != 5 && !(a.Priority == 10 && a.PushType == "alert") {
			bad("apns.priority", "must be 5 (or 10 for alert pushes)")
		}
	}
	c.checkPorts(bad)
}

// checkPorts checks allowed_ports, and that the enabled providers'
// endpoints are on one of them (push egress would refuse every push
// otherwise).
func (c Config) checkPorts(bad func(key, msg string)) {
	if len(c.AllowedPorts) == 0 {
		bad("allowed_ports", "must list at least one port (443: HTTPS, where push services listen)")
	}
	for i, p := range c.AllowedPorts {
		if p < 1 || p > 65535 {
			bad(fmt.Sprintf("allowed_ports[%d]", i), fmt.Sprintf("must be a port between 1 and 65535, got %d", p))
		}
	}
	endpoint := func(key, raw string) {
		u, err := url.Parse(raw)
		if err != nil || raw == "" {
			return
		}
		host := u.Hostname()
		ip, err := netip.ParseAddr(host)
		if c.WebPush.AllowLocalEndpoints && (host == "localhost" || (err == nil && ip.IsLoopback())) {
			return // a local stand-in: any port
		}
		port := map[string]int{"https": 443, "http": 80}[u.Scheme]
		if p := u.Port(); p != "" {
			port, _ = strconv.Atoi(p)
		}
		if !slices.Contains(c.AllowedPorts, port) {
			bad(key, fmt.Sprintf("port %d is not in push.allowed_ports %v: push egress would refuse it", port, c.AllowedPorts))
		}
	}
	if c.FCM.Enabled {
		endpoint("fcm.endpoint", c.FCM.Endpoint)
		endpoint("fcm.token_url", c.FCM.TokenURL)
	}
	if c.APNs.Enabled {
		endpoint("apns.endpoint", c.APNs.Endpoint)
	}
}
