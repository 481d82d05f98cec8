package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/store"
)

// openBackends opens the store, the bus and presence through the engines
// the configuration names (config's engine lists), and the token
// verifier. Each is closed, in reverse order, by closeBackends.
func (a *App) openBackends(ctx context.Context) error {
	cfg := a.cfg
	var st store.Store
	err := a.untilReachable(ctx, "store", func() (err error) {
		st, err = cfg.StoreEngine().Open(ctx, cfg.Store.Config, cfg.StoreEnv(a.log, a.metrics))
		return err
	})
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

	var pr presence.Presence
	err = a.untilReachable(ctx, "presence", func() (err error) {
		pr, err = cfg.PresenceEngine().Open(ctx, cfg.Presence.Config)
		return err
	})
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

// Backoff of untilReachable between attempts: from startRetryMin,
// doubling up to startRetryMax.
const (
	startRetryMin = 250 * time.Millisecond
	startRetryMax = 5 * time.Second
)

// untilReachable runs open until it succeeds, fails for another reason
// than its engine not answering (a refused or reset connection, a
// timeout: see unreachable), or ctx ends: a start waits for a backend that
// is down, saying so in the log with each attempt, instead of giving up.
// A backend that answers and refuses (a wrong password, a schema it cannot
// migrate) fails the start at once.
func (a *App) untilReachable(ctx context.Context, what string, open func() error) error {
	wait := startRetryMin
	for {
		err := open()
		if err == nil || !unreachable(err) {
			return err
		}
		a.log.Warn("waiting for the "+what+": it does not answer", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, startRetryMax)
	}
}

// unreachable reports whether err says that a backend did not answer: its
// connection refused or reset, or a network operation timed out.
func unreachable(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
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

// deadLettered is the bus's OnDeadLetter hook: it counts the message.
func (a *App) deadLettered(queue, _ string) {
	a.metrics.DeadLettered.WithLabelValues(queue).Inc()
}

// receivePaused shows in metrics when a consumer holds its messages because
// a backend it needs is down.
func (a *App) receivePaused(queue string, paused bool) {
	v := 0.0
	if paused {
		v = 1
	}
	a.metrics.ReceivePaused.WithLabelValues(queue).Set(v)
}

// authOptions are the token verifier's options: auth.* and the HS256
// secret.
func authOptions(cfg config.Config) auth.Options {
	return auth.Options{Config: cfg.Auth, HS256Secret: []byte(cfg.JWTSecret)}
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
