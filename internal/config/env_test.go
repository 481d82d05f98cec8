package config

import (
	"os"
	"slices"
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
		return map[string]string{"DATABASE_URL": "postgres://routing@db/routing", "ROUTING_INSTANCE_ID": "pod-1",
			"JWT_SECRET": "0123456789abcdef0123456789abcdef"}[k]
	})
	c.FillDefaults()
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if c.RunMode != ModeProduction || c.Bus.Type != "nats" || c.Store.Type != "postgres" || c.Presence.Type != "redis" {
		t.Fatalf("not a scale-out setup on open engines: %+v", c)
	}
}
