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

	"github.com/go-routing-service/routingservice/internal/admin"
)

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
