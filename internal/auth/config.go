package auth

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Config is auth.* in config.yaml: which tokens are accepted. The HS256
// secret comes from the environment (JWT_SECRET), never from the file.
type Config struct {
	// Algorithms accepted; HS256 uses JWT_SECRET, the others keys from JWKSURL.
	Algorithms  []string      `yaml:"algorithms"`
	JWKSURL     string        `yaml:"jwks_url"`
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	Issuer      string        `yaml:"issuer"`
	Audience    string        `yaml:"audience"`
	Leeway      time.Duration `yaml:"leeway"`
	// MaxTokenAge, when set, refuses tokens issued (iat) longer ago than
	// this, and tokens without iat; 0: no limit beyond exp.
	MaxTokenAge time.Duration `yaml:"max_token_age"`
}

// DefaultConfig is the configuration with no file: HS256 only.
func DefaultConfig() Config {
	return Config{Algorithms: []string{HS256}, JWKSRefresh: time.Hour, Leeway: 30 * time.Second}
}

// PublishedSecrets are HS256 secrets that appeared in public source; a
// token signed with one proves nothing.
var PublishedSecrets = []string{"routingservice-development-secret-do-not-use-in-production"}

// Check reports each problem of c's keys to bad, keys relative to auth
// ("algorithms[0]"), with secret the HS256 secret (JWT_SECRET, or the one
// local mode generates); prod is production mode.
func (c Config) Check(secret string, prod bool, bad func(key, msg string)) {
	for i, a := range c.Algorithms {
		switch a {
		case HS256, "RS256", "ES256", "EdDSA":
		default:
			bad(fmt.Sprintf("algorithms[%d]", i), fmt.Sprintf("must be HS256, RS256, ES256 or EdDSA, got %q", a))
		}
	}
	if len(c.Algorithms) == 0 {
		bad("algorithms", "must name at least one algorithm")
	}
	if slices.Contains(c.Algorithms, HS256) {
		switch {
		case secret == "" && prod:
			bad("algorithms", "HS256 needs the JWT_SECRET environment variable in production")
		case secret == "":
			bad("algorithms", "HS256 needs a secret: set JWT_SECRET (local mode generates one into the data dir)")
		case slices.Contains(PublishedSecrets, secret):
			bad("algorithms", "JWT_SECRET is a published secret (anyone can sign tokens with it); set a random one")
		case len(secret) < 32 && prod:
			bad("algorithms", "JWT_SECRET must be at least 32 bytes in production")
		}
	}
	if slices.ContainsFunc(c.Algorithms, func(a string) bool { return a != HS256 }) && c.JWKSURL == "" {
		bad("jwks_url", "is required for RS256, ES256 or EdDSA")
	}
	if c.JWKSURL != "" && prod {
		if !strings.HasPrefix(c.JWKSURL, "https://") {
			bad("jwks_url", "must be https in production")
		}
		// Any token the identity provider signs would do, whatever it was for.
		if c.Issuer == "" {
			bad("issuer", "is required with auth.jwks_url in production")
		}
		if c.Audience == "" {
			bad("audience", "is required with auth.jwks_url in production")
		}
	}
	if c.Leeway < 0 || c.Leeway > 5*time.Minute {
		bad("leeway", "must be between 0 and 5m")
	}
	if c.MaxTokenAge < 0 {
		bad("max_token_age", "must not be negative (0: no limit beyond exp)")
	}
}
