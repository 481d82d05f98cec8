package config

import (
	"strings"
	"testing"
)

// With no file, every listener binds a loopback address: nothing is
// reachable from another machine until the configuration says so.
func TestDefaultListenersAreLoopback(t *testing.T) {
	c := Default()
	for key, addr := range map[string]string{"api.listen": c.API.Listen, "realtime.listen": c.Realtime.Listen, "ops.listen": c.Ops.Listen} {
		if !LoopbackListen(addr) {
			t.Errorf("%s defaults to %q, which is not a loopback address", key, addr)
		}
	}
	if c.Demo.Enabled {
		t.Error("demo.enabled defaults to true")
	}
}

func TestLoopbackListen(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8082": true, "127.0.0.1:0": true, "[::1]:8082": true, "localhost:8082": true, "127.1.2.3:1": true,
		":8082": false, "0.0.0.0:8082": false, "[::]:8082": false, "192.0.2.2:8082": false, "example.com:80": false, "127.0.0.1": false,
	} {
		if got := LoopbackListen(addr); got != want {
			t.Errorf("LoopbackListen(%q) = %v, want %v", addr, got, want)
		}
	}
}

// The demo's token endpoint signs in as anyone: the demo runs in local mode
// only, on a loopback API listener, where it can work.
func TestDemoOnlyLocalAndOnLoopback(t *testing.T) {
	check := func(yaml string) error {
		t.Helper()
		c := Default()
		if err := Parse([]byte(yaml), &c); err != nil {
			t.Fatal(err)
		}
		c.FromEnv(func(k string) string { return map[string]string{"JWT_SECRET": strings.Repeat("d", 40)}[k] })
		c.FillDefaults()
		return c.Check()
	}
	for _, listen := range []string{"127.0.0.1:8082", "[::1]:8082", "localhost:8082", "127.0.0.1:0"} {
		if err := check("demo: {enabled: true}\napi: {listen: '" + listen + "'}\n"); err != nil {
			t.Errorf("demo on api.listen %s refused: %v", listen, err)
		}
	}
	if err := check("demo: {enabled: true}\n"); err != nil {
		t.Errorf("demo on the defaults refused: %v", err)
	}
	for _, tc := range []struct{ name, yaml, key string }{
		{"every interface", "demo: {enabled: true}\napi: {listen: ':8082'}\n", "api.listen"},
		{"every IPv4 interface", "demo: {enabled: true}\napi: {listen: '0.0.0.0:8082'}\n", "api.listen"},
		{"every IPv6 interface", "demo: {enabled: true}\napi: {listen: '[::]:8082'}\n", "api.listen"},
		{"a public address", "demo: {enabled: true}\napi: {listen: '192.0.2.2:8082'}\n", "api.listen"},
		{"without the realtime role", "demo: {enabled: true}\nroles: [api, pipeline]\n", "demo.enabled"},
		{"without HS256", "demo: {enabled: true}\nauth: {algorithms: [ES256], jwks_url: 'https://idp.example/jwks'}\n", "demo.enabled"},
		{"with any host allowed", "demo: {enabled: true}\nrealtime: {allowed_hosts: ['*']}\n", "realtime.allowed_hosts"},
	} {
		if err := check(tc.yaml); err == nil || !strings.Contains(err.Error(), "config key "+tc.key+":") {
			t.Errorf("demo %s: error %v does not name %s", tc.name, err, tc.key)
		}
	}
	// Production refuses it, even on loopback and with every other key right.
	prod := productionSetup(t, "demo: {enabled: true}\napi: {listen: '127.0.0.1:8082'}\n")
	if err := prod.Check(); err == nil || !strings.Contains(err.Error(), "config key demo.enabled:") {
		t.Fatalf("production with the demo: error %v does not name demo.enabled", err)
	}
	if err := productionSetup(t, "api: {listen: '127.0.0.1:8082'}\n").Check(); err != nil {
		t.Fatalf("the same production setup without the demo is refused, so the refusal above proves nothing: %v", err)
	}
}

// insecure_links lets production take links to NATS, Redis and PostgreSQL
// without TLS or credentials (a compose network), and nothing else.
func TestInsecureLinks(t *testing.T) {
	const plain = `run_mode: production
bus: {type: nats, nats: {url: "nats://nats-0:4222,nats://nats-1:4222"}}
store: {type: postgres}
presence: {type: redis, redis: {addr: "redis:6379"}}
push: {webpush: {vapid_private_key_file: /run/secrets/vapid}}
`
	check := func(yaml string, env map[string]string) error {
		t.Helper()
		c := Default()
		if err := Parse([]byte(yaml), &c); err != nil {
			t.Fatal(err)
		}
		c.FromEnv(func(k string) string { return env[k] })
		c.FillDefaults()
		return c.Check()
	}
	env := map[string]string{"JWT_SECRET": strings.Repeat("k", 40), "DATABASE_URL": "postgres://routing:routing@postgres:5432/routing?sslmode=disable"}
	err := check(plain, env)
	for _, key := range []string{"bus.nats.url", "bus.nats.credentials_file", "presence.redis.tls", "REDIS_PASSWORD", "DATABASE_URL"} {
		if err == nil || !strings.Contains(err.Error(), "config key "+key+":") {
			t.Errorf("production with plain links: error %v does not name %s", err, key)
		}
	}
	if err := check("insecure_links: true\n"+plain, env); err != nil {
		t.Fatalf("insecure_links: true still refuses the plain links: %v", err)
	}
	// Every other production check holds.
	for _, tc := range []struct {
		name, old, new, key string
		env                 map[string]string
	}{
		{"no JWT_SECRET", "", "", "auth.algorithms", map[string]string{"DATABASE_URL": env["DATABASE_URL"]}},
		{"wildcard CORS", "", "api: {cors_allowed_origins: ['*']}\n", "api.cors_allowed_origins", env},
		{"no VAPID key file", "vapid_private_key_file: /run/secrets/vapid", "enabled: true", "push.webpush.vapid_private_key_file", env},
		{"the demo", "", "demo: {enabled: true}\napi: {listen: '127.0.0.1:8082'}\n", "demo.enabled", env},
		{"the embedded bus", "type: nats, ", "type: embedded, ", "bus.type", env},
	} {
		yaml := "insecure_links: true\n" + plain + tc.new
		if tc.old != "" {
			yaml = "insecure_links: true\n" + strings.Replace(plain, tc.old, tc.new, 1)
		}
		if err := check(yaml, tc.env); err == nil || !strings.Contains(err.Error(), "config key "+tc.key+":") {
			t.Errorf("insecure_links with %s: error %v does not name %s", tc.name, err, tc.key)
		}
	}
}
