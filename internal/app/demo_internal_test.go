package app

import (
	"testing"

	"github.com/go-routing-service/routingservice/internal/config"
)

// The demo (and its token endpoint, which signs in as anyone) is served in
// local mode only, and only where it can work.
func TestDemoEnabledOnlyInLocalMode(t *testing.T) {
	local := func() config.Config {
		c := config.Default()
		c.FillDefaults()
		c.JWTSecret = "local-secret-0123456789-0123456789-abcdef"
		return c
	}
	for _, tc := range []struct {
		name   string
		mutate func(*config.Config)
		want   bool
	}{
		{"local default", func(*config.Config) {}, true},
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
