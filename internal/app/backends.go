package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
)

// openBackends opens the store, the bus and presence through the engines
// the configuration names (config's engine lists), and the token
// verifier. Each is closed, in reverse order, by closeBackends.
func (a *App) openBackends(ctx context.Context) error {
	cfg := a.cfg
	st, err := cfg.StoreEngine().Open(ctx, cfg.Store.Config, cfg.StoreEnv(a.log, a.metrics))
	if err != nil {
		return err
	}
	a.store = st
	a.closers = append(a.closers, st.Close)
	if a.opts.WrapStore != nil {
		a.store = a.opts.WrapStore(st)
	}

	if err := a.openBus(ctx); err != nil {
		return err
	}

	pr, err := cfg.PresenceEngine().Open(ctx, cfg.Presence.Config)
	if err != nil {
		return err
	}
	a.presence = pr
	a.closers = append(a.closers, pr.Close)

	v, err := auth.NewVerifier(ctx, authOptions(cfg))
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	a.verifier = v
	a.closers = append(a.closers, func() error { v.Close(); return nil })
	return nil
}

// openBus opens the engine's driver and the portable bus over it, with
// the instance's hooks: dead letters counted, paused consumers shown,
// messages traced.
func (a *App) openBus(ctx context.Context) error {
	cfg := a.cfg
	log := a.log.With("bus", cfg.Bus.Type)
	e := cfg.Bus.Engine()
	d, closeEngine, err := e.Open(ctx, cfg.Bus.Config, cfg.BusEnv(log))
	if err != nil {
		return err
	}
	o := cfg.Bus.Options(cfg.Bus.Packing())
	o.Concurrency = cfg.Pipeline.Concurrency
	o.DeliveryConcurrency = cfg.Realtime.DeliveryConcurrency
	o.Logger = log
	o.OnDeadLetter = a.deadLettered
	o.OnOutage = a.receivePaused
	o.TracerProvider = a.tp
	o.System = e.System()
	b := bus.New(d, o)
	a.bus = b
	a.closers = append(a.closers, func() error { return errors.Join(b.Close(), closeEngine()) })
	return nil
}

// authOptions maps the configuration onto the token verifier's.
func authOptions(cfg config.Config) auth.Options {
	return auth.Options{
		HS256Secret: []byte(cfg.JWTSecret),
		Algorithms:  cfg.Auth.Algorithms,
		JWKSURL:     cfg.Auth.JWKSURL,
		JWKSRefresh: cfg.Auth.JWKSRefresh,
		Issuer:      cfg.Auth.Issuer,
		Audience:    cfg.Auth.Audience,
		Leeway:      cfg.Auth.Leeway,
		MaxTokenAge: cfg.Auth.MaxTokenAge,
	}
}
