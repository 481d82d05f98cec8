package app

import (
	"context"
	"time"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/config"
)

// receivePaused shows in metrics when a consumer holds its messages because
// a backend it needs is down.
func (a *App) receivePaused(queue string, paused bool) {
	v := 0.0
	if paused {
		v = 1
	}
	a.metrics.ReceivePaused.WithLabelValues(queue).Set(v)
}

// readinessChecks keeps, of checks, those of what this instance's roles
// need to do their job: the api role the bus (ephemeral messages and
// routing events; every instance shares the store, so a store outage does
// not take api instances out of rotation); the pipeline the bus, the store
// and presence; the realtime role the bus, presence, and the store for
// backlogs. Other checks (jwks, dead-letter setup) stay. Each backend check
// also records its backend's state in routing_backend_up.
func (a *App) readinessChecks(checks map[string]api.ReadyFunc) map[string]api.ReadyFunc {
	need := map[string]bool{}
	if a.cfg.Has(config.RoleAPI) {
		need["bus"] = true
	}
	if a.cfg.Has(config.RolePipeline) || a.cfg.Has(config.RoleRealtime) {
		need["bus"], need["store"], need["presence"] = true, true, true
	}
	out := make(map[string]api.ReadyFunc, len(checks))
	for name, check := range checks {
		if backend := name; backend == "bus" || backend == "store" || backend == "presence" {
			if !need[backend] {
				continue
			}
			out[name] = func(ctx context.Context) error {
				err := check(ctx)
				a.backendUp(backend, err == nil)
				return err
			}
			continue
		}
		out[name] = check
	}
	return out
}

// backendUp records a backend's state in metrics.
func (a *App) backendUp(backend string, up bool) {
	v := 0.0
	if up {
		v = 1
	}
	a.metrics.BackendUp.WithLabelValues(backend).Set(v)
}

// backendProbeInterval is how often every backend's state is read into
// routing_backend_up, needed by this instance's roles or not.
const backendProbeInterval = 5 * time.Second

// watchBackends keeps routing_backend_up current until ctx ends.
func (a *App) watchBackends(ctx context.Context) {
	probes := map[string]api.ReadyFunc{"bus": a.bus.Ping, "store": a.store.Ping, "presence": a.presence.Ping}
	t := time.NewTicker(backendProbeInterval)
	defer t.Stop()
	for {
		for name, ping := range probes {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := ping(pctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			a.backendUp(name, err == nil)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
