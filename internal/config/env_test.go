package config

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestRolesFromEnv(t *testing.T) {
	for env, want := range map[string][]string{
		"":                      {RoleAPI, RolePipeline, RoleRealtime},
		"realtime":              {RoleRealtime},
		" api , pipeline ,":     {RoleAPI, RolePipeline},
		"api,pipeline,realtime": {RoleAPI, RolePipeline, RoleRealtime},
	} {
		c := Default()
		c.FromEnv(func(k string) string { return map[string]string{"ROUTING_ROLES": env}[k] })
		if !slices.Equal(c.Roles, want) {
			t.Errorf("ROUTING_ROLES=%q: roles %q, want %q", env, c.Roles, want)
		}
	}
	c := Default()
	c.FromEnv(func(k string) string { return map[string]string{"ROUTING_ROLES": "api,web"}[k] })
	c.FillDefaults()
	if err := c.Check(); err == nil {
		t.Fatal("ROUTING_ROLES=api,web accepted")
	}
}

// config/nats-postgres-redis.yaml is a complete, valid production setup on
// open engines.
func TestOpenEnginesExampleIsValid(t *testing.T) {
	b, err := os.ReadFile("../../config/nats-postgres-redis.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := Parse(b, &c); err != nil {
		t.Fatal(err)
	}
	c.FromEnv(func(k string) string {
		return map[string]string{"DATABASE_URL": "postgres://routing@db/routing?sslmode=verify-full", "ROUTING_INSTANCE_ID": "pod-1",
			"JWT_SECRET": "0123456789abcdef0123456789abcdef", "REDIS_PASSWORD": "secret"}[k]
	})
	c.FillDefaults()
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if c.RunMode != ModeProduction || c.Bus.Type != "nats" || c.Store.Type != "postgres" || c.Presence.Type != "redis" {
		t.Fatalf("not a scale-out setup on open engines: %+v", c)
	}
}

// single_node: true lets production run on the embedded engines, with
// every other production check in force.
func TestSingleNodeProduction(t *testing.T) {
	load := func(yaml string, env map[string]string) error {
		c := Default()
		if err := Parse([]byte(yaml), &c); err != nil {
			t.Fatal(err)
		}
		c.FromEnv(func(k string) string { return env[k] })
		c.FillDefaults()
		return c.Check()
	}
	secret := map[string]string{"JWT_SECRET": "0123456789abcdef0123456789abcdef"}
	const single = "run_mode: production\nsingle_node: true\npush: {webpush: {vapid_private_key_file: /etc/routingservice/vapid}}\n"
	if err := load(single, secret); err != nil {
		t.Fatalf("single node production refused: %v", err)
	}
	err := load("run_mode: production\npush: {webpush: {vapid_private_key_file: /etc/routingservice/vapid}}\n", secret)
	for _, key := range []string{"bus.type", "store.type", "presence.type", "single_node: true"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("production on the embedded engines without single_node: error %v does not name %s", err, key)
		}
	}
	// Other production checks stay.
	if err := load(single, nil); err == nil || !strings.Contains(err.Error(), "JWT_SECRET") {
		t.Errorf("single node without JWT_SECRET: %v", err)
	}
	if err := load("run_mode: production\nsingle_node: true\n", secret); err == nil || !strings.Contains(err.Error(), "vapid_private_key_file") {
		t.Errorf("single node without a VAPID key file: %v", err)
	}
}
