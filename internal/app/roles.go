package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/demo"
	"github.com/go-routing-service/routingservice/internal/realtime"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/web"
)

func (a *App) wire(ctx context.Context) error {
	cfg := a.cfg
	pr, err := newPushRole(ctx, cfg, a.store, a.metrics, a.log, a.tp)
	if err != nil {
		return err
	}
	a.push = pr
	if cfg.Has(config.RoleAPI) {
		ln, err := net.Listen("tcp", cfg.API.Listen)
		if err != nil {
			return fmt.Errorf("config key api.listen: %w", err)
		}
		a.apiLn = ln
	}
	if cfg.Has(config.RoleRealtime) && cfg.Realtime.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Realtime.Listen)
		if err != nil {
			return fmt.Errorf("config key realtime.listen: %w", err)
		}
		a.rtLn = ln
	}
	demoOn := a.demoEnabled()
	// One rate limit per user for every send, over HTTP and over the
	// WebSocket alike.
	userLimit := api.NewLimiter(cfg.API.RateLimit, cfg.API.RateBurst)
	var delivery *waitFor // nil without the realtime role
	if cfg.Has(config.RoleRealtime) {
		// The delivery subscription must exist before a connection
		// registers presence, or events addressed here meanwhile are lost
		// (the message itself is stored; it would wait for the next
		// connection). When the bus does not answer yet, connections are
		// refused (503) until it does.
		delivery = a.prepareDelivery(ctx)
		o := realtime.Options{
			Config:          cfg.Realtime,
			Instance:        cfg.InstanceID,
			Leeway:          cfg.Auth.Leeway,
			MaxPayloadBytes: cfg.API.MaxPayloadBytes,
			Heartbeat:       cfg.Presence.Heartbeat,
			Logger:          a.log.With("role", "realtime"),
			Metrics:         a.metrics,
			TracerProvider:  a.tp,
		}
		if demoOn {
			o.AllowedOrigins = append(demoOrigins(a.apiLn.Addr()), cfg.Realtime.AllowedOrigins...)
		}
		a.realtime = realtime.New(o, a.store, a.presence, a.authenticateSession)
		a.metrics.WSMaxConnections.Set(float64(cfg.Realtime.MaxConns))
	}
	if cfg.Has(config.RoleAPI) || cfg.Has(config.RolePipeline) || cfg.Has(config.RoleRealtime) {
		a.core = route.New(a.coreOptions(), a.store, a.presence, a.bus)
	}
	if a.realtime != nil {
		// Messages sent over the WebSocket are accepted by the same core,
		// under the same per-user rate limit, as POST /v1/messages.
		a.realtime.AcceptSends(a.core, userLimit)
	}
	checks := map[string]api.ReadyFunc{"store": a.store.Ping, "bus": a.bus.Ping, "presence": a.presence.Ping}
	a.addRoleChecks(checks, delivery)
	if cfg.Auth.JWKSURL != "" {
		// Until the key set has loaded, tokens signed with its keys fail.
		checks["jwks"] = func(context.Context) error { return a.verifier.Ready() }
	}
	a.addDeadLetterCheck(ctx, checks)
	checks = a.readinessChecks(checks)
	if cfg.Has(config.RoleAPI) {
		a.api = api.New(api.Options{
			Config:            cfg.API,
			MaxTargetsPerUser: cfg.Push.MaxTargetsPerUser,
			ValidateTarget:    a.push.validateTarget,
			VAPIDPublicKey:    a.push.vapidPublicKey(),
			Limiter:           userLimit,
			Logger:            a.log.With("role", "api"),
			Metrics:           a.metrics,
		}, a.store, a.core, a.authenticate)
		rt := api.NewRouter(a.metrics, a.log)
		a.api.Mount(rt)
		if a.realtime != nil && a.rtLn == nil {
			a.realtime.Mount(rt) // realtime.listen "": one port
		}
		if demoOn {
			if err := a.mountDemo(rt); err != nil {
				return err
			}
		}
		var h http.Handler = api.Trace(api.CORS(cfg.API.CORSAllowedOrigins, rt), rt, a.tp)
		if a.realtime != nil && a.rtLn == nil {
			h = gateConnect(delivery, h)
		}
		if demoOn {
			// A page on a DNS-rebound name must not reach /demo/token.
			h = demo.HostGuard(cfg.Realtime.AllowedHosts, h)
		}
		a.apiSrv = &http.Server{
			Handler:           h,
			ReadHeaderTimeout: cfg.API.ReadTimeout,
			ReadTimeout:       cfg.API.ReadTimeout,
			WriteTimeout:      cfg.API.WriteTimeout,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
		}
	}
	if a.realtime != nil && a.rtLn != nil {
		rt := api.NewRouter(a.metrics, a.log)
		a.realtime.Mount(rt)
		a.rtSrv = &http.Server{
			Handler:           gateConnect(delivery, rt),
			ReadHeaderTimeout: cfg.Realtime.ReadHeaderTimeout,
			IdleTimeout:       cfg.Realtime.IdleTimeout,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
		}
	}
	return a.listenOps(checks)
}

// coreOptions maps the configuration onto the routing core's: what the
// api role accepts, what the pipeline role routes, and, with both, the
// in-process hand-off between them.
func (a *App) coreOptions() route.Options {
	cfg := a.cfg
	o := route.Options{
		Instance:               cfg.InstanceID,
		MaxPayloadBytes:        cfg.API.MaxPayloadBytes,
		AcceptTimeout:          cfg.API.PublishTimeout,
		MaxPendingPerRecipient: cfg.Store.MaxPendingPerRecipient,
		// Per sender, over all recipients: any URN is a recipient.
		MaxPendingPerSender:      cfg.Store.MaxPendingPerSender,
		MaxPendingBytesPerSender: cfg.Store.MaxPendingBytesPerSender,

		Consume:        cfg.Has(config.RolePipeline),
		HandlerTimeout: cfg.Pipeline.HandlerTimeout,
		MaxBatch:       cfg.Store.MaxBatch,
		RerouteAfter:   cfg.Pipeline.RerouteAfter,
		UnackedAfter:   cfg.Push.UnackedAfter,
		Logger:         a.log.With("role", "route"),
		Metrics:        a.metrics,
		TracerProvider: a.tp,
	}
	// The backlog limit, where the engine reports its backlog.
	if (cfg.Has(config.RoleAPI) || cfg.Has(config.RoleRealtime)) && cfg.API.MaxIngressBacklog > 0 && a.bus.Capabilities().Backlog {
		o.MaxBacklog = cfg.API.MaxIngressBacklog
		o.Backlog = func(ctx context.Context) (int64, error) {
			n, err := a.bus.IngressBacklog(ctx)
			if err == nil {
				a.metrics.IngressBacklog.Set(float64(n))
			}
			return n, err
		}
	}
	if cfg.Has(config.RolePipeline) {
		o.MarkDelay = cfg.Pipeline.MarkDelay()
		if a.realtime != nil {
			o.Sessions = a.realtime
		}
		if a.push != nil {
			o.Notifier = a.push
		}
		if cfg.Has(config.RoleAPI) || cfg.Has(config.RoleRealtime) {
			o.HandoffQueue = cfg.Pipeline.HandoffQueue()
		}
	}
	return o
}

// waitFor is a role's wait for what it needs from a backend before it can
// do its job: not ready (on /readyz, under its own check) until done.
type waitFor struct {
	what string // what is waited for, as /readyz and the log name it
	done atomic.Bool
	last atomic.Pointer[error] // why not yet
}

// check is the readiness check of w.
func (w *waitFor) check(context.Context) error {
	if w.done.Load() {
		return nil
	}
	if p := w.last.Load(); p != nil {
		return fmt.Errorf("waiting for %s: %w", w.what, *p)
	}
	return fmt.Errorf("waiting for %s", w.what)
}

// Backoff of the waits of a starting role.
const (
	roleWaitMin = 250 * time.Millisecond
	roleWaitMax = 5 * time.Second
)

// prepareDelivery makes this instance's delivery subscription (see
// wire), at once when the bus answers, else in the background: it tries
// again with backoff from 250 ms to 5 s, logging what it waits for, until
// it is made or the bus closes. Never giving up, the instance starts
// whatever the order its backends come up in.
func (a *App) prepareDelivery(ctx context.Context) *waitFor {
	w := &waitFor{what: "the bus to set up this instance's delivery subscription"}
	instance := a.cfg.InstanceID
	try := func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		err := a.bus.PrepareDelivery(pctx, instance)
		if err == nil {
			w.done.Store(true)
			return nil
		}
		w.last.Store(&err)
		return err
	}
	err := try(ctx)
	if err == nil {
		return w
	}
	log := a.log.With("role", "realtime")
	log.Warn("the bus does not answer: WebSocket connections are refused (503) and /readyz says delivery_subscription until this instance's delivery subscription is set up; trying again", "err", err)
	go func() {
		ctx := context.WithoutCancel(ctx)
		wait := roleWaitMin
		for {
			t := time.NewTimer(wait)
			<-t.C
			err := try(ctx)
			if err == nil {
				log.Info("the bus answers: delivery subscription set up, WebSocket connections accepted")
				return
			}
			if errors.Is(err, bus.ErrClosed) {
				return
			}
			wait = min(2*wait, roleWaitMax)
			log.Warn("waiting for the bus to set up this instance's delivery subscription", "err", err, "retry_in", wait)
		}
	}()
	return w
}

// gateConnect refuses WebSocket connections (GET /v1/connect) with 503
// and Retry-After until the delivery subscription exists (w done); other
// requests pass. A nil w gates nothing.
func gateConnect(w *waitFor, next http.Handler) http.Handler {
	if w == nil {
		return next
	}
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !w.done.Load() && r.URL.Path == "/v1/connect" {
			web.WriteError(rw, &web.Error{Status: http.StatusServiceUnavailable, Code: web.CodeBackendUnavailable,
				Message: "this instance is waiting for the bus to set up its delivery subscription; connect again shortly", RetryAfter: 1})
			return
		}
		next.ServeHTTP(rw, r)
	})
}
