package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// testApp is one instance of the service running in this process.
type testApp struct {
	cfg    config.Config
	app    *app.App
	apiURL string
	wsURL  string
	opsURL string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startApp runs an instance on the embedded default with random ports and a
// fresh data dir; mutate adjusts the configuration. It stops when the test ends.
func startApp(t *testing.T, mutate func(*config.Config)) *testApp {
	t.Helper()
	return startAppWith(t, mutate, app.Options{})
}

// startAppWith is startApp with app.Options.
func startAppWith(t *testing.T, mutate func(*config.Config), opts app.Options) *testApp {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return startAppLogged(t, mutate, opts, log)
}

// startAppLogged is startAppWith logging to log.
func startAppLogged(t *testing.T, mutate func(*config.Config), opts app.Options, log *slog.Logger) *testApp {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.API.Listen = "127.0.0.1:0"
	cfg.Realtime.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = "127.0.0.1:0"
	cfg.Realtime.MaxConnsPerIP = 0 // every test client is on 127.0.0.1
	cfg.Realtime.ConnectRatePerIP, cfg.Realtime.ConnectRatePerUser = 0, 0
	cfg.Bus.MinBackoff = 50 * time.Millisecond
	cfg.Bus.MaxBackoff = 200 * time.Millisecond
	cfg.Bus.AckDeadline = 5 * time.Second
	cfg.Push.WebPush.Enabled = false
	cfg.API.RateLimit = 0
	cfg.JWTSecret = "test-secret-0123456789-0123456789-abcdef"
	if mutate != nil {
		mutate(&cfg)
	}
	cfg.FillDefaults()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.NewWithOptions(ctx, cfg, log, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ta := &testApp{cfg: cfg, app: a, cancel: cancel, done: make(chan error, 1)}
	if addr := a.APIAddr(); addr != "" {
		ta.apiURL = "http://" + addr
	}
	if addr := a.WSAddr(); addr != "" {
		ta.wsURL = "ws://" + addr
	}
	ta.opsURL = "http://" + a.OpsAddr()
	go func() { ta.done <- a.Run(ctx) }()
	t.Cleanup(ta.stop)
	return ta
}

// stop drains the instance and waits for it (idempotent).
func (ta *testApp) stop() {
	ta.once.Do(func() {
		ta.cancel()
		if err := <-ta.done; err != nil {
			panic(fmt.Sprintf("app run: %v", err))
		}
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// client returns a client authenticated as sub.
func (ta *testApp) client(t *testing.T, sub string) *client.Client {
	t.Helper()
	tok, err := auth.Sign([]byte(ta.cfg.JWTSecret), sub, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &client.Client{APIURL: ta.apiURL, WSURL: ta.wsURL, Token: tok}
}

// connect opens a WebSocket as c; it is closed when the test ends.
func connect(t *testing.T, c *client.Client) *client.Conn {
	t.Helper()
	conn, err := c.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// next reads the next message of c within a deadline.
func next(t *testing.T, c *client.Conn) client.Envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	env, err := c.Next(ctx)
	if err != nil {
		t.Fatalf("next message: %v", err)
	}
	return env
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// connected waits until the instance holds n connections of any user, so a
// live message sent next finds them registered.
func connected(t *testing.T, ta *testApp, n float64) {
	t.Helper()
	eventually(t, fmt.Sprintf("%v connections", n), func() bool {
		return gaugeValue(ta.app.Metrics().WSConnections) >= n
	})
}

func apiErr(t *testing.T, err error) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("want an API error, got %v", err)
	}
	return e
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
