package app_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/faulttest"
)

// signalHandler is a slog handler that closes a channel the first time a
// record's message starts with prefix.
type signalHandler struct {
	slog.Handler
	prefix string
	once   *sync.Once
	seen   chan struct{}
}

func (h signalHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.prefix) {
		h.once.Do(func() { close(h.seen) })
	}
	return h.Handler.Handle(ctx, r)
}

func (h signalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h signalHandler) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	return h
}

// A start with presence (Redis) down waits for it, saying so in the log,
// instead of giving up: once the server answers, the instance starts and
// delivers.
func TestStartWaitsForPresence(t *testing.T) {
	port := freePort(t)
	rs := privateServer(t, "redis-server", port, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	seen := make(chan struct{})
	log := slog.New(signalHandler{Handler: slog.NewTextHandler(io.Discard, nil), prefix: "waiting for the presence", once: new(sync.Once), seen: seen})
	go func() {
		select {
		case <-seen:
			rs.Start()
		case <-time.After(30 * time.Second):
		}
	}()
	start := time.Now()
	ta := startAppLogged(t, func(c *config.Config) {
		c.Presence.Type = "redis"
		c.Presence.Redis.Addr = rs.Addr()
	}, app.Options{}, log)
	select {
	case <-seen:
	default:
		t.Fatal("the instance started without having waited for presence")
	}
	t.Logf("started %v after the first attempt", time.Since(start).Round(time.Millisecond))
	bob := ta.client(t, "urn:sm:user:bob")
	conn := connect(t, bob)
	connected(t, ta, 1)
	ck := faulttest.NewChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 0)
	ck.Receive(conn)
	for range 10 {
		ck.SendOne()
	}
	faulttest.WaitFor(t, 10*time.Second, "the messages sent once presence is up", ck.AllStoredArrived)
	ck.Check()
}
