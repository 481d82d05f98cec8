package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
)

// listenOps binds the operations listener: /healthz, /readyz and /metrics,
// apart from the public ports.
func (a *App) listenOps(checks map[string]api.ReadyFunc) error {
	rt := api.NewRouter(nil, a.log)
	api.MountOps(rt, api.Ops{Checks: checks, Metrics: a.metrics.Handler(), CheckTimeout: a.cfg.Ops.CheckTimeout, Pprof: a.cfg.Ops.Pprof,
		Logger: a.log.With("role", "ops")})
	a.opsSrv = &http.Server{
		Handler:           rt,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", a.cfg.Ops.Listen)
	if err != nil {
		return fmt.Errorf("config key ops.listen: %w", err)
	}
	a.opsLn = ln
	return nil
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
			if backend == "bus" {
				out[name] = graced(out[name], busReadyGrace)
			}
			continue
		}
		out[name] = check
	}
	return out
}

// addRoleChecks adds the readiness checks of what this instance's roles
// wait for beyond their backends answering: the pipeline role its ingress
// subscription ("ingress_subscription"), the realtime role its delivery
// subscription ("delivery_subscription", set up before connections are
// taken, then received from). Each fails, naming what it waits for in
// the log, from the role's first failed attempt until it has it.
func (a *App) addRoleChecks(checks map[string]api.ReadyFunc, delivery *waitFor) {
	if a.cfg.Has(config.RolePipeline) {
		checks["ingress_subscription"] = func(context.Context) error { return a.bus.Subscribed(bus.QueueIngress) }
	}
	if delivery != nil {
		checks["delivery_subscription"] = func(ctx context.Context) error {
			if err := delivery.check(ctx); err != nil {
				return err
			}
			return a.bus.Subscribed(bus.QueueDelivery)
		}
	}
}

// busReadyGrace is how long the bus may fail its check, after having
// passed it, before the instance says it is not ready: a cluster node's
// failover (a stream leader elected anew: 4-9 s with nats-server 2.9's
// election timeouts) is ridden through (publishes fail fast, and what
// they carried is held and tried again), and taking every instance out
// of rotation at once for it would be worse than the failover. A bus
// that never answered since the start fails at once; a quorum loss or an
// outage outlasts the grace.
const busReadyGrace = 10 * time.Second

// graced is check, passing while its failures since its last pass are
// younger than grace (and it passed once). A check that runs out of time
// is a failure like another.
func graced(check api.ReadyFunc, grace time.Duration) api.ReadyFunc {
	var mu sync.Mutex
	var passed bool
	var failingSince time.Time
	return func(ctx context.Context) error {
		// A check that does not answer in time fails within the grace
		// too: it gets less time than /readyz waits for it.
		cctx := ctx
		if dl, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			cctx, cancel = context.WithDeadline(ctx, dl.Add(-min(200*time.Millisecond, time.Until(dl)/2)))
			defer cancel()
		}
		err := check(cctx)
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			passed, failingSince = true, time.Time{}
			return nil
		}
		if !passed {
			return err
		}
		if failingSince.IsZero() {
			failingSince = time.Now()
		}
		if d := time.Since(failingSince); d < grace {
			return nil
		}
		return err
	}
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

// deadLetterSetupTTL is how long a dead-letter setup check's result is
// reused by /readyz (the check is several API calls).
const deadLetterSetupTTL = 30 * time.Second

// addDeadLetterCheck adds the readiness check "dead_letter_setup" when the
// engine has a dead-letter setup to verify (Pub/Sub), and logs what is
// missing once at start.
func (a *App) addDeadLetterCheck(ctx context.Context, checks map[string]api.ReadyFunc) {
	if !a.bus.Capabilities().SetupCheck {
		return
	}
	cc := &cachedCheck{check: a.bus.CheckSetup, ttl: deadLetterSetupTTL}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cc.ping(sctx); err != nil {
		a.log.Error("dead-letter setup is incomplete: failed messages may be retried forever or lost; /readyz reports dead_letter_setup until it is fixed", "err", err)
	}
	checks["dead_letter_setup"] = cc.ping
}

// cachedCheck runs check at most once per ttl and answers from its last
// result meanwhile.
type cachedCheck struct {
	check func(context.Context) error
	ttl   time.Duration

	mu   sync.Mutex
	at   time.Time
	last error
}

func (c *cachedCheck) ping(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < c.ttl {
		return c.last
	}
	err := c.check(ctx)
	if ctx.Err() != nil && err != nil {
		return err // the caller gave up: do not remember it
	}
	c.at, c.last = time.Now(), err
	return err
}
