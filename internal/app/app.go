// Package app is the composition root: it turns a Config into opened
// backends and wired roles, runs them, and drains them in order on
// shutdown. It knows which part goes where, never how a part works: each
// part gets its own configuration (realtime.Options{Config:
// cfg.Realtime}, api.Options{Config: cfg.API}, ...) and the engines are
// opened through the lists in internal/config.
//
// What it promises:
//   - Nothing is created, migrated or connected to before every key and
//     every file the configuration names has been checked (Preflight);
//     New fails naming the key, and closes whatever it opened.
//   - An instance runs exactly its roles: api (the HTTP API), pipeline
//     (routing, the sweeps, push) and realtime (WebSockets and this
//     instance's delivery subscription, which exists before any
//     connection registers presence), and /readyz checks what those roles
//     need (ops.go).
//   - Run drains in order: it stops accepting requests and connections,
//     lets sends in flight finish, stops the consumers after their
//     in-flight messages, writes the routed marks held back, then closes
//     the backends in reverse order of opening. A role that fails stops
//     the others, and Run returns its error.
//
// Files: app.go (New, Run, Close), options.go (test hooks), backends.go
// (the store, bus, presence and token verifier), roles.go (the roles
// wired from them), ops.go (/healthz, /readyz, /metrics and the backend
// probes), admin.go (the dead-letter admin socket), push.go (the push
// providers), maintenance.go (the bus engine's upkeep), preflight.go and
// checkbackends.go (what config check runs), exposure.go, demo.go,
// tracing.go.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/datadir"
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
	release, err := prepareDataDir(cfg.DataDir, a.log)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, release) // first in, so released last
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

// prepareDataDir makes the data dir private (datadir.Prepare): it holds
// the local JWT secret, the VAPID private key, the store and the admin
// socket. It then takes the dir's lock (datadir.Lock) before anything in
// it is opened, so a second instance on the same dir is refused with an
// error naming the dir, not by the store or the bus it would open first;
// release gives the lock up.
func prepareDataDir(dir string, log *slog.Logger) (release func() error, err error) {
	if err := datadir.Prepare(dir, log); err != nil {
		return nil, &config.KeyError{Key: "data_dir", Err: err}
	}
	release, err = datadir.Lock(dir)
	if err != nil {
		return nil, &config.KeyError{Key: "data_dir", Err: err}
	}
	return release, nil
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
