package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/demo"
	"github.com/go-routing-service/routingservice/internal/realtime"
	"github.com/go-routing-service/routingservice/internal/route"
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
	if cfg.Has(config.RoleRealtime) {
		// The delivery subscription must exist before a connection
		// registers presence, or events addressed here meanwhile are lost
		// (the message itself is stored; it would wait for the next
		// connection).
		if err := a.bus.PrepareDelivery(ctx, cfg.InstanceID); err != nil {
			return fmt.Errorf("bus: delivery subscription of %s: %w", cfg.InstanceID, err)
		}
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
			Handler:           rt,
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
