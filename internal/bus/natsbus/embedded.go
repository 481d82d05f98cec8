package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// EmbeddedOptions configures the in-process NATS server.
type EmbeddedOptions struct {
	// SyncAlways makes JetStream fsync every write before it acknowledges
	// the publish (JetStream's sync_always).
	SyncAlways bool
	// SyncInterval is how often JetStream fsyncs its files when SyncAlways
	// is false (JetStream's sync_interval). Zero keeps the server's default.
	SyncInterval time.Duration
	// ServerName names the server in advisories and monitoring; default
	// "routingservice".
	ServerName string
	// StartTimeout bounds how long StartEmbedded waits for the server to
	// accept connections; default 10s.
	StartTimeout time.Duration
	// Logger receives the server's log: notices at Debug (its start-up
	// banner alone is some thirty lines), warnings at Warn (the file system
	// error behind a refused stream store is only there), errors at Error.
	// Nil drops it.
	Logger *slog.Logger
}

// EmbeddedServer is a NATS server with JetStream running inside the process.
// It opens no network port: connect to it with Connect.
type EmbeddedServer struct {
	srv *server.Server
}

// StartEmbedded starts a NATS server with JetStream in the process, storing
// its streams under dir. It returns once the server accepts connections.
// Starting again on the same dir recovers the streams and their messages.
func StartEmbedded(dir string, o EmbeddedOptions) (*EmbeddedServer, error) {
	if dir == "" {
		return nil, errors.New("natsbus: embedded server needs a storage directory")
	}
	if o.ServerName == "" {
		o.ServerName = "routingservice"
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 10 * time.Second
	}
	opts := &server.Options{
		ServerName:   o.ServerName,
		JetStream:    true,
		StoreDir:     dir,
		DontListen:   true,
		NoSigs:       true,
		NoLog:        true,
		SyncAlways:   o.SyncAlways,
		SyncInterval: o.SyncInterval,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsbus: new embedded server: %w", err)
	}
	if o.Logger != nil {
		srv.SetLogger(serverLogger{o.Logger.With("component", "nats-server")}, false, false)
	}
	srv.Start()
	if !srv.ReadyForConnections(o.StartTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("natsbus: embedded server not ready within %v", o.StartTimeout)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, errors.New("natsbus: embedded server started without JetStream")
	}
	return &EmbeddedServer{srv: srv}, nil
}

// Connect opens a client connection to the embedded server, in process (no
// socket). The caller closes it.
func (s *EmbeddedServer) Connect(opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.Name("routingservice"), nats.InProcessServer(s.srv), nats.ReconnectBufSize(-1)}, opts...)
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("natsbus: connect to embedded server: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server and waits until it has stopped and flushed its
// streams to disk, or until ctx is done. Clients should be closed first.
func (s *EmbeddedServer) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		// Owned by the server's lifetime: it ends when the server has stopped.
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("natsbus: embedded server shutdown: %w", ctx.Err())
	}
}

// Connect connects to an external NATS cluster at url (comma-separated for
// several seeds), authenticating with the credentials file when it is not
// empty. The connection reconnects forever, trying every 250 ms (a server
// back from a restart is found within moments); the caller closes it.
// opts come after the defaults, so they may override them (nats.Timeout).
//
// It keeps no reconnect buffer: while it is disconnected a publish fails
// at once instead of waiting to be sent on reconnect, so a publish that
// returned an error (an ingress publish the API answered 503 for) is never
// sent later.
func Connect(url string, credentialsFile string, opts ...nats.Option) (*nats.Conn, error) {
	if url == "" {
		return nil, errors.New("natsbus: connect: empty url")
	}
	opts = append([]nats.Option{
		nats.Name("routingservice"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(5 * time.Second),
		nats.ReconnectBufSize(-1),
	}, opts...)
	if credentialsFile != "" {
		opts = append(opts, nats.UserCredentials(credentialsFile))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("natsbus: connect %s: %w", redactURL(url), err)
	}
	return nc, nil
}

// serverLogger passes the embedded server's log lines to slog: notices at
// Debug, warnings at Warn, errors and fatal errors at Error (a fatal error
// does not end the process). The server's debug and trace lines are
// dropped.
type serverLogger struct{ log *slog.Logger }

func (l serverLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l serverLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l serverLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l serverLogger) Debugf(string, ...any)           {}
func (l serverLogger) Tracef(string, ...any)           {}
