package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
)

// BackendCheck is the outcome of reaching one backend.
type BackendCheck struct {
	// Backend is bus, store, presence or jwks.
	Backend string
	// Detail says what was found when Err is nil.
	Detail string
	Err    error
}

// CheckBackends reaches every backend the configuration's roles use, with
// the connection settings serve uses (the same option mapping: endpoints,
// TLS, credentials), and changes nothing: it creates, migrates, updates
// and writes nothing, and a stream, topic, subscription or schema that
// serve would create is reported, not made. Each check is bounded by
// timeout; they run at once. The results come in a fixed order: bus,
// store, presence, then jwks when auth.jwks_url is set and a role verifies
// tokens. Each engine says what it found (its Inspect).
//
// Run Preflight first: CheckBackends assumes a configuration that passed
// config.Check and Preflight.
func CheckBackends(ctx context.Context, cfg config.Config, timeout time.Duration) []BackendCheck {
	log := slog.New(slog.DiscardHandler)
	type check struct {
		name string
		run  func(context.Context) (string, error)
	}
	checks := []check{
		{"bus", func(ctx context.Context) (string, error) {
			env := cfg.BusEnv(log)
			env.Timeout = timeout
			return cfg.Bus.Engine().Inspect(ctx, cfg.Bus.Config, env)
		}},
		{"store", func(ctx context.Context) (string, error) {
			return cfg.StoreEngine().Inspect(ctx, cfg.Store.Config, cfg.StoreEnv(log, nil))
		}},
		{"presence", func(ctx context.Context) (string, error) {
			return cfg.PresenceEngine().Inspect(ctx, cfg.Presence.Config)
		}},
	}
	// Every role opens the bus, the store and presence; the key set
	// serves the roles that verify tokens.
	if cfg.Auth.JWKSURL != "" && (cfg.Has(config.RoleAPI) || cfg.Has(config.RoleRealtime)) {
		checks = append(checks, check{"jwks", func(ctx context.Context) (string, error) { return checkJWKS(ctx, cfg) }})
	}
	out := make([]BackendCheck, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			detail, err := c.run(cctx)
			if err != nil && errors.Is(cctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
				err = fmt.Errorf("%w (no answer within the %v timeout)", err, timeout)
			}
			out[i] = BackendCheck{Backend: c.name, Detail: detail, Err: err}
		}()
	}
	wg.Wait()
	return out
}

func checkJWKS(ctx context.Context, cfg config.Config) (string, error) {
	where := cfg.Auth.JWKSURL
	if u, err := url.Parse(where); err == nil {
		where = u.Redacted()
	}
	ks, err := auth.FetchKeySet(ctx, authOptions(cfg))
	if err != nil {
		return "", fmt.Errorf("%s (config key auth.jwks_url): %w", where, err)
	}
	var counts, usable []string
	for _, alg := range slices.Sorted(maps.Keys(ks.Keys)) {
		counts = append(counts, fmt.Sprintf("%s: %d", alg, ks.Keys[alg]))
		if slices.Contains(cfg.Auth.Algorithms, alg) {
			usable = append(usable, alg)
		}
	}
	d := fmt.Sprintf("%s: %d usable key", where, ks.Usable())
	if ks.Usable() != 1 {
		d += "s"
	}
	if len(counts) > 0 {
		d += " (" + strings.Join(counts, ", ") + ")"
	}
	if len(ks.Skipped) > 0 {
		d += fmt.Sprintf("; %d skipped: %s", len(ks.Skipped), strings.Join(ks.Skipped, "; "))
	}
	var want []string
	for _, a := range cfg.Auth.Algorithms {
		if a != auth.HS256 {
			want = append(want, a)
		}
	}
	if len(want) > 0 && len(usable) == 0 {
		return "", fmt.Errorf("%s: no key for %s (config key auth.algorithms), so every such token would be refused", d, strings.Join(want, ", "))
	}
	return d, nil
}
