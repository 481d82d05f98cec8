package config

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

// push.allowed_ports is checked, and an enabled provider's endpoint on a
// port push egress would refuse is an error naming the endpoint's key;
// loopback stand-ins (allow_local_endpoints) take any port.
func TestPushAllowedPorts(t *testing.T) {
	const apns = "push: {allowed_ports: %s, apns: {enabled: true, key_file: k, key_id: i, team_id: t, topic: x, endpoint: '%s'}}"
	for _, c := range []struct {
		name string
		yaml string
		key  string // "": valid
	}{
		{"default", "", ""},
		{"empty", "push: {allowed_ports: []}", "push.allowed_ports"},
		{"out of range", "push: {allowed_ports: [443, 70000]}", "push.allowed_ports[1]"},
		{"zero", "push: {allowed_ports: [0]}", "push.allowed_ports[0]"},
		{"apns on 443", "push: {apns: {enabled: true, key_file: k, key_id: i, team_id: t, topic: x}}", ""},
		{"apns on 2197, not allowed", fmt.Sprintf(apns, "[443]", "https://api.push.apple.com:2197"), "push.apns.endpoint"},
		{"apns on 2197, allowed", fmt.Sprintf(apns, "[443, 2197]", "https://api.push.apple.com:2197"), ""},
		{"fcm on 8443", "push: {fcm: {enabled: true, credentials_file: c, endpoint: 'https://fcm.example.com:8443'}}", "push.fcm.endpoint"},
		{"fcm token url on 80", "push: {fcm: {enabled: true, credentials_file: c, token_url: 'http://oauth.example.com/token'}}", "push.fcm.token_url"},
		{"disabled provider not checked", "push: {fcm: {endpoint: 'https://fcm.example.com:8443'}}", ""},
		{"local stand-in on any port", "push: {webpush: {allow_local_endpoints: true}, fcm: {enabled: true, credentials_file: c, endpoint: 'http://127.0.0.1:40123'}}", ""},
		{"local name without allow_local_endpoints", "push: {fcm: {enabled: true, credentials_file: c, endpoint: 'http://localhost:40123'}}", "push.fcm.endpoint"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := Default()
			if err := Parse([]byte(c.yaml), &cfg); err != nil {
				t.Fatal(err)
			}
			cfg.FromEnv(func(k string) string {
				return map[string]string{"JWT_SECRET": "push-ports-test-secret-0123456789abcdef"}[k]
			})
			cfg.FillDefaults()
			var keys []string
			var errs Errors
			if errors.As(cfg.Check(), &errs) {
				for _, e := range errs {
					keys = append(keys, e.Key)
				}
			}
			if c.key == "" && len(keys) != 0 {
				t.Fatalf("refused: %v", keys)
			}
			if c.key != "" && !slices.Contains(keys, c.key) {
				t.Fatalf("errors name %v, want %s", keys, c.key)
			}
		})
	}
}
