package app

import (
	"testing"

	"github.com/go-routing-service/routingservice/internal/config"
)

// The demo (and its token endpoint, which signs in as anyone) is served
// only when asked for, in local mode, on a loopback API listener, and only
// where it can work.
func TestDemoEnabledOnlyInLocalMode(t *testing.T) {
	local := func() config.Config {
		c := config.Default()
		c.FillDefaults()
		c.JWTSecret = "local-secret-0123456789-0123456789-abcdef"
		c.Demo.Enabled = true
		return c
	}
	for _, tc := range []struct {
		name   string
		mutate func(*config.Config)
		want   bool
	}{
		{"local default with demo.enabled", func(*config.Config) {}, true},
		{"local default", func(c *config.Config) { c.Demo.Enabled = false }, false},
		{"api on every interface", func(c *config.Config) { c.API.Listen = ":8082" }, false},
		{"api on a public address", func(c *config.Config) { c.API.Listen = "192.0.2.2:8082" }, false},
		{"production", func(c *config.Config) {
			c.RunMode = config.ModeProduction
			c.JWTSecret = "a-real-secret-0123456789-0123456789"
		}, false},
		{"no HS256", func(c *config.Config) { c.Auth.Algorithms = []string{"ES256"} }, false},
		{"no secret", func(c *config.Config) { c.JWTSecret = "" }, false},
		{"api role only", func(c *config.Config) { c.Roles = []string{config.RoleAPI} }, false},
		{"realtime role only", func(c *config.Config) { c.Roles = []string{config.RoleRealtime} }, false},
	} {
		c := local()
		tc.mutate(&c)
		if got := (&App{cfg: c}).demoEnabled(); got != tc.want {
			t.Errorf("%s: demoEnabled = %v, want %v", tc.name, got, tc.want)
		}
	}
}
