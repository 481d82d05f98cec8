package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/admin"
	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/store"
)

// Options are hooks for tests and fault injection; production runs use New.
type Options struct {
	// WrapStore, when set, wraps the opened store: every role then uses
	// the wrapper (a test injects store outages with it). The App still
	// closes the store it opened.
	WrapStore func(store.Store) store.Store
	// TracerProvider, when set, traces the instance with it (a test's
	// in-memory recorder) instead of what telemetry.traces configures.
	// The App does not shut it down.
	TracerProvider trace.TracerProvider
}

// Bus returns the instance's bus (tests publish on it directly, as a
// misbehaving producer would).
func (a *App) Bus() *bus.Bus { return a.bus }

// AdminSocket is the path of the admin socket ("" when there is none: the
// key admin.socket is "-", or the bus has no dead-letter queues).
func (a *App) AdminSocket() string {
	if a.admin == nil {
		return ""
	}
	return a.admin.path
}

// deadLettered is the bus's OnDeadLetter hook: it counts the message.
func (a *App) deadLettered(queue, _ string) {
	a.metrics.DeadLettered.WithLabelValues(queue).Inc()
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

// adminServer serves the admin endpoint on its Unix socket.
type adminServer struct {
	path string
	ln   net.Listener
	srv  *http.Server
	log  *slog.Logger
	once sync.Once
}

// listenAdmin binds the admin socket when it is enabled.
func (a *App) listenAdmin(ctx context.Context) error {
	path := a.cfg.AdminSocket()
	if path == "" {
		return nil
	}
	ln, err := admin.Listen(ctx, path)
	if errors.Is(err, admin.ErrInUse) {
		return fmt.Errorf("config key admin.socket: %w: another instance runs with this data dir or socket; stop it or give this one another admin.socket", err)
	}
	if err != nil {
		return fmt.Errorf("config key admin.socket: %w", err)
	}
	log := a.log.With("role", "admin")
	a.admin = &adminServer{
		path: path,
		ln:   ln,
		log:  log,
		srv: &http.Server{
			Handler:           admin.NewHandler(a.bus, admin.Options{Logger: log, Metrics: a.metrics}),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
	}
	return nil
}

// serve serves until shutdown.
func (s *adminServer) serve() error {
	s.log.Info("admin listening", "socket", s.path)
	return s.srv.Serve(s.ln)
}

// shutdown stops serving, letting requests in flight finish until ctx is
// done, and removes the socket file.
func (s *adminServer) shutdown(ctx context.Context) {
	if err := s.srv.Shutdown(ctx); err != nil {
		s.log.Warn("admin shutdown", "err", err)
	}
	s.close()
}

// close closes the listener (of a server that never ran, too); closing a
// Unix listener removes its socket file.
func (s *adminServer) close() {
	s.once.Do(func() { s.ln.Close() })
}
