// Package app is the composition root: it turns a Config into opened
// backends and wired roles, runs them, and drains them in order on shutdown.
package app

import (
	"context"

	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/demo"
	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/realtime"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// App is one running instance.
type App struct {
	cfg      config.Config
	log      *slog.Logger
	metrics  *telemetry.Metrics
	store    store.Store
	bus      *bus.Bus
	presence presence.Presence
	verifier *auth.Verifier
	push     *pushRole

	api      *api.Server
	realtime *realtime.Server
	// core accepts (api role) and routes (pipeline role) messages; nil
	// with the realtime role alone.
	core *route.Core

	apiSrv, rtSrv, opsSrv *http.Server
	apiLn, rtLn, opsLn    net.Listener

	opts  Options
	admin *adminServer
	// tp traces the instance; nil when tracing is off.
	tp trace.TracerProvider

	// closers release backends in reverse order of opening.
	closers []func() error
}

// New opens the backends the configured roles need and binds the listeners.
// On error everything opened so far is closed.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*App, error) {
	return NewWithOptions(ctx, cfg, log, Options{})
}

// NewWithOptions is New with the hooks of opts.
func NewWithOptions(ctx context.Context, cfg config.Config, log *slog.Logger, opts Options) (a *App, err error) {
	if log == nil {
		log = slog.Default()
	}
	self := &App{cfg: cfg, log: log.With("instance", cfg.InstanceID), metrics: telemetry.NewMetrics(), opts: opts}
	a = self
	defer func() {
		if err != nil {
			self.Close() // a is nil by then
		}
	}()
	// Everything the configuration names is checked before anything is
	// created, migrated or connected to.
	if err := Preflight(cfg); err != nil {
		return nil, err
	}
	if err := prepareDataDir(cfg.DataDir, a.log); err != nil {
		return nil, err
	}
	if cfg.LocalSecret {
		a.log.Info("JWT_SECRET is not set: tokens are checked with the secret generated in the data dir (local mode only)", "file", filepath.Join(cfg.DataDir, config.LocalSecretFile))
	}
	if err := a.openTracing(ctx); err != nil {
		return nil, err
	}
	if err := a.openBackends(ctx); err != nil {
		return nil, err
	}
	if err := a.wire(ctx); err != nil {
		return nil, err
	}
	if err := a.listenAdmin(ctx); err != nil {
		return nil, err
	}
	a.logExposure()
	return a, nil
}

func (a *App) authenticate(token string) (string, error) {
	c, err := a.verifier.Verify(token)
	if err != nil {
		// The reason (expired, bad signature, ...) is for the operator only.
		a.log.Debug("token refused", "reason", err)
		return "", err
	}
	return c.Subject, nil
}

// authenticateSession is authenticate with the token's expiry, which ends
// a WebSocket session.
func (a *App) authenticateSession(token string) (string, time.Time, error) {
	c, err := a.verifier.Verify(token)
	if err != nil {
		return "", time.Time{}, err
	}
	return c.Subject, c.ExpiresAt, nil
}

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
	rtOrigins := cfg.Realtime.AllowedOrigins
	if demoOn {
		rtOrigins = append(demoOrigins(a.apiLn.Addr()), rtOrigins...)
	}
	if cfg.Has(config.RoleRealtime) {
		// The delivery subscription must exist before a connection
		// registers presence, or events addressed here meanwhile are lost
		// (the message itself is stored; it would wait for the next
		// connection).
		if err := a.bus.PrepareDelivery(ctx, cfg.InstanceID); err != nil {
			return fmt.Errorf("bus: delivery subscription of %s: %w", cfg.InstanceID, err)
		}
		a.realtime = realtime.New(realtime.Options{
			Instance:            cfg.InstanceID,
			AllowedOrigins:      rtOrigins,
			AllowedHosts:        cfg.Realtime.AllowedHosts,
			TrustedProxies:      trustedProxies(cfg.Realtime.TrustedProxies),
			TrustedProxyHops:    cfg.Realtime.TrustedProxyHops,
			Leeway:              cfg.Auth.Leeway,
			MaxConns:            cfg.Realtime.MaxConns,
			MaxConnsPerIP:       cfg.Realtime.MaxConnsPerIP,
			ConnectRatePerIP:    cfg.Realtime.ConnectRatePerIP,
			ConnectBurstPerIP:   cfg.Realtime.ConnectBurstPerIP,
			ConnectRatePerUser:  cfg.Realtime.ConnectRatePerUser,
			ConnectBurstPerUser: cfg.Realtime.ConnectBurstPerUser,
			AckRate:             cfg.Realtime.AckRate,
			AckBurst:            cfg.Realtime.AckBurst,
			MaxFrameBytes:       cfg.Realtime.MaxFrameBytes,
			PingInterval:        cfg.Realtime.PingInterval,
			PongTimeout:         cfg.Realtime.PongTimeout,
			WriteTimeout:        cfg.Realtime.WriteTimeout,
			SendQueue:           cfg.Realtime.SendQueue,
			SendBufferBytes:     cfg.Realtime.SendBufferBytes,
			MaxPayloadBytes:     cfg.API.MaxPayloadBytes,
			BacklogPage:         cfg.Realtime.BacklogPage,
			MaxConnsPerUser:     cfg.Realtime.MaxConnsPerUser,
			Heartbeat:           cfg.Presence.Heartbeat,
			Logger:              a.log.With("role", "realtime"),
			Metrics:             a.metrics,
			TracerProvider:      a.tp,
		}, a.store, a.presence, a.authenticateSession)
		a.metrics.WSMaxConnections.Set(float64(cfg.Realtime.MaxConns))
	}
	if cfg.Has(config.RoleAPI) || cfg.Has(config.RolePipeline) {
		a.core = route.New(a.coreOptions(), a.store, a.presence, a.bus)
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
			MaxBodyBytes:      cfg.API.MaxBodyBytes,
			MaxBatch:          cfg.API.MaxBatch,
			MaxBatchBodyBytes: cfg.API.MaxBatchBodyBytes,
			MaxTargetsPerUser: cfg.Push.MaxTargetsPerUser,
			ValidateTarget:    a.push.validateTarget,
			VAPIDPublicKey:    a.push.vapidPublicKey(),
			Limiter:           userLimit,
			Logger:            a.log.With("role", "api"),
			Metrics:           a.metrics,
			MaxPageBytes:      cfg.API.MaxPageBytes,
			MaxFetchesPerUser: cfg.API.MaxFetchesPerUser,
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

func trustedProxies(cidrs []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil { // Check refused the others
			out = append(out, p.Masked())
		}
	}
	return out
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
	if cfg.Has(config.RoleAPI) && cfg.API.MaxIngressBacklog > 0 && a.bus.Capabilities().Backlog {
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
		o.MarkDelay = min(route.DefaultMarkDelay, cfg.Pipeline.RerouteAfter/4)
		if a.realtime != nil {
			o.Sessions = a.realtime
		}
		if a.push != nil {
			o.Notifier = a.push
		}
		if cfg.Has(config.RoleAPI) && cfg.Pipeline.LocalHandoff {
			o.HandoffQueue = route.DefaultHandoffQueue
		}
	}
	return o
}

// APIAddr is the API listener's address ("" without the api role).
func (a *App) APIAddr() string {
	if a.apiLn == nil {
		return ""
	}
	return a.apiLn.Addr().String()
}

// WSAddr is the address WebSockets connect to ("" without the realtime
// role): the API listener's when realtime.listen is empty.
func (a *App) WSAddr() string {
	switch {
	case a.rtLn != nil:
		return a.rtLn.Addr().String()
	case a.realtime != nil:
		return a.APIAddr()
	}
	return ""
}

// OpsAddr is the operations listener's address.
func (a *App) OpsAddr() string {
	if a.opsLn == nil {
		return ""
	}
	return a.opsLn.Addr().String()
}

// Metrics returns the instance's metrics.
func (a *App) Metrics() *telemetry.Metrics { return a.metrics }

// Run serves until ctx is done, then drains: it stops accepting requests and
// connections, lets in-flight sends finish, stops the consumers after their
// in-flight messages, and closes the backends. A role that fails stops the
// others.
func (a *App) Run(ctx context.Context) error {
	cfg := a.cfg
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()

	var wg sync.WaitGroup
	fail := func(role string, err error) {
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("role failed", "role", role, "err", err)
			stop(fmt.Errorf("%s: %w", role, err))
		}
	}
	goRole := func(role string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail(role, f())
		}()
	}
	if a.apiSrv != nil {
		a.log.Info("api listening", "addr", a.APIAddr())
		goRole("api", func() error { return a.apiSrv.Serve(a.apiLn) })
	}
	if a.rtSrv != nil {
		a.log.Info("websocket listening", "addr", a.WSAddr())
		goRole("realtime", func() error { return a.rtSrv.Serve(a.rtLn) })
	} else if a.realtime != nil {
		a.log.Info("websocket on the api listener", "addr", a.WSAddr())
	}
	if a.realtime != nil {
		goRole("delivery", func() error { return a.realtime.Run(work, a.bus) })
	}
	if a.opsSrv != nil {
		a.log.Info("operations listening", "addr", a.OpsAddr())
		goRole("ops", func() error { return a.opsSrv.Serve(a.opsLn) })
	}
	if a.core != nil {
		goRole("route", func() error { return a.core.Run(work) })
	}
	if a.admin != nil {
		goRole("admin", a.admin.serve)
	}
	goRole("backends", func() error { a.watchBackends(work); return nil })
	if a.push != nil {
		goRole("push", func() error { return a.push.run(work) })
	}
	if cfg.Has(config.RolePipeline) {
		goRole("janitor", func() error { a.runMaintenance(work); return nil })
	}
	if cfg.Has(config.RolePipeline) {
		goRole("sweep", func() error {
			store.Sweep(work, a.store, cfg.Store.Retention, cfg.API.IdempotencyWindow, cfg.Store.SweepInterval, a.log)
			return nil
		})
	}
	a.log.Info("serving", "roles", cfg.Roles, "bus", cfg.Bus.Type, "store", cfg.Store.Type, "presence", cfg.Presence.Type, "data_dir", cfg.DataDir)

	<-ctx.Done()
	cause := context.Cause(ctx)
	a.log.Info("draining")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if a.admin != nil {
		a.admin.shutdown(sctx)
	}
	if a.apiSrv != nil {
		if err := a.apiSrv.Shutdown(sctx); err != nil {
			a.log.Warn("api shutdown", "err", err)
		}
	}
	if a.rtSrv != nil {
		if err := a.rtSrv.Shutdown(sctx); err != nil {
			a.log.Warn("websocket listener shutdown", "err", err)
		}
	}
	if a.realtime != nil {
		if err := a.realtime.Shutdown(sctx); err != nil {
			a.log.Warn("realtime shutdown", "err", err)
		}
	}
	stopWork()
	if a.opsSrv != nil {
		// Last: probes see the instance until it has drained.
		if err := a.opsSrv.Shutdown(sctx); err != nil {
			a.log.Warn("ops shutdown", "err", err)
		}
	}
	wg.Wait()
	a.closeBackends()
	a.log.Info("stopped")
	if cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// Close releases the backends of an App that was made but not run.
func (a *App) Close() {
	if a.apiLn != nil {
		a.apiLn.Close()
	}
	if a.rtLn != nil {
		a.rtLn.Close()
	}
	if a.opsLn != nil {
		a.opsLn.Close()
	}
	if a.admin != nil {
		a.admin.close()
	}
	a.closeBackends()
}

func (a *App) closeBackends() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		if err := a.closers[i](); err != nil {
			a.log.Warn("close", "err", err)
		}
	}
	a.closers = nil
}
