package admin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/admin"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/natsbus"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/testkit"
)

// fixture is an embedded natsbus bus with the admin handler served on a
// socket in a temporary directory.
type fixture struct {
	bus     *bus.Bus
	metrics *telemetry.Metrics
	socket  string
	client  *admin.Client
	logs    *testkit.Buffer
	dead    chan string // queue of each dead-lettered message (OnDeadLetter)
}

// shortDir is a temporary directory with a path short enough for a Unix
// socket (sun_path holds about 100 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "adm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv, err := natsbus.StartEmbedded(t.TempDir(), natsbus.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	f := &fixture{metrics: telemetry.NewMetrics(), logs: &testkit.Buffer{}, dead: make(chan string, 100)}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := natsbus.New(context.Background(), nc, natsbus.Config{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	b := bus.New(d, bus.Options{
		MinBackoff:   10 * time.Millisecond,
		MaxBackoff:   20 * time.Millisecond,
		Logger:       logger,
		OnDeadLetter: func(queue, _ string) { f.dead <- queue },
	})
	t.Cleanup(func() { b.Close() })
	f.bus = b
	f.socket = filepath.Join(shortDir(t), "admin.sock")
	ln, err := admin.Listen(context.Background(), f.socket)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: admin.NewHandler(b, admin.Options{
		Logger:  slog.New(slog.NewTextHandler(f.logs, nil)),
		Metrics: f.metrics,
	})}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	t.Cleanup(func() {
		if err := hs.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Error(err)
		}
	})
	f.client = admin.NewClient(f.socket)
	return f
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// deadLetter publishes n ingress messages and has a handler fail each
// permanently; it returns once the bus reported all n dead-lettered.
func (f *fixture) deadLetter(t *testing.T, n int) []string {
	t.Helper()
	ctx := ctxT(t)
	var ids []string
	for i := range n {
		id := fmt.Sprintf("poison-%d", i)
		ids = append(ids, id)
		m := &bus.Message{ID: id, Data: bytes.Repeat([]byte{'x'}, 10+i), Attributes: map[string]string{"k": "v"}}
		if err := f.bus.PublishIngress(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- f.bus.ReceiveIngress(rctx, func(context.Context, *bus.Message) error {
			return fmt.Errorf("undecodable body: %w", bus.ErrPermanent)
		})
	}()
	for range n {
		select {
		case q := <-f.dead:
			if q != bus.QueueIngress {
				t.Fatalf("dead-lettered on %q", q)
			}
		case <-ctx.Done():
			t.Fatal("timed out waiting for dead letters")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestListShowReplayPurge(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	f.deadLetter(t, 3)

	msgs, err := f.client.List(ctx, bus.QueueIngress, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 3 {
		t.Fatalf("listed %d dead messages, want 3", len(msgs))
	}
	// Handlers run concurrently: the dead-letter order is not the publish order.
	slices.SortFunc(msgs, func(a, b admin.DeadMessage) int { return strings.Compare(a.MessageID, b.MessageID) })
	for i, m := range msgs {
		if m.MessageID != fmt.Sprintf("poison-%d", i) || m.Queue != bus.QueueIngress || m.Attempts != 1 ||
			m.Size != 10+i || !strings.Contains(m.Reason, "undecodable body") || m.DeadAt.IsZero() || m.Attributes["k"] != "v" {
			t.Fatalf("dead message %d: %+v", i, m)
		}
	}
	if got, err := f.client.List(ctx, bus.QueueIngress, 2); err != nil || len(got) != 2 {
		t.Fatalf("list with limit 2: %d messages, %v", len(got), err)
	}
	if got, err := f.client.List(ctx, bus.QueueDelivery, 0); err != nil || len(got) != 0 {
		t.Fatalf("delivery queue: %d messages, %v", len(got), err)
	}

	one, err := f.client.Get(ctx, bus.QueueIngress, msgs[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if one.MessageID != "poison-1" || one.Size != 11 {
		t.Fatalf("show: %+v", one)
	}

	// Replay one to a receiver that now accepts it.
	got := make(chan string, 10)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- f.bus.ReceiveIngress(rctx, func(_ context.Context, m *bus.Message) error {
			got <- m.ID
			return nil
		})
	}()
	n, err := f.client.Replay(ctx, bus.QueueIngress, []string{msgs[1].ID})
	if err != nil || n != 1 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	select {
	case id := <-got:
		if id != "poison-1" {
			t.Fatalf("replayed message arrived as %q", id)
		}
	case <-ctx.Done():
		t.Fatal("replayed message never arrived")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(f.metrics.DeadReplayed.WithLabelValues(bus.QueueIngress)); v != 1 {
		t.Fatalf("replayed counter %v, want 1", v)
	}
	left, err := f.client.List(ctx, bus.QueueIngress, 0)
	slices.SortFunc(left, func(a, b admin.DeadMessage) int { return strings.Compare(a.MessageID, b.MessageID) })
	if err != nil || len(left) != 2 || left[0].MessageID != "poison-0" || left[1].MessageID != "poison-2" {
		t.Fatalf("after replay: %+v, %v", left, err)
	}

	// Purge: nothing without ids or all; then one by id; then all.
	if _, err := f.client.Purge(ctx, bus.QueueIngress, nil, false); statusOf(err) != http.StatusBadRequest {
		t.Fatalf("purge without ids: %v", err)
	}
	if n, err := f.client.Purge(ctx, bus.QueueIngress, []string{left[0].ID, "999999"}, false); err != nil || n != 1 {
		t.Fatalf("purge by id: %d, %v", n, err)
	}
	if n, err := f.client.Purge(ctx, bus.QueueIngress, nil, true); err != nil || n != 1 {
		t.Fatalf("purge all: %d, %v", n, err)
	}
	if left, err := f.client.List(ctx, bus.QueueIngress, 0); err != nil || len(left) != 0 {
		t.Fatalf("after purge: %+v, %v", left, err)
	}
	if v := testutil.ToFloat64(f.metrics.DeadPurged.WithLabelValues(bus.QueueIngress)); v != 2 {
		t.Fatalf("purged counter %v, want 2", v)
	}
	logs := f.logs.String()
	for _, want := range []string{"dead letters replayed", "dead letters purged", "queue=ingress", "count=1"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("logs lack %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "xxxxxxxxxx") {
		t.Fatal("a payload reached the logs")
	}
}

func TestReplayAll(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	want := f.deadLetter(t, 4)
	n, err := f.client.Replay(ctx, bus.QueueIngress, nil)
	if err != nil || n != 4 {
		t.Fatalf("replay all: %d, %v", n, err)
	}
	var got []string
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- f.bus.ReceiveIngress(rctx, func(_ context.Context, m *bus.Message) error { ch <- m.ID; return nil })
	}()
	for len(got) < 4 {
		select {
		case id := <-ch:
			got = append(got, id)
		case <-ctx.Done():
			t.Fatalf("replayed %v of %v", got, want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("replayed %v, want %v", got, want)
	}
}

func statusOf(err error) int {
	var e *admin.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func TestErrors(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	if _, err := f.client.Get(ctx, bus.QueueIngress, "42"); statusOf(err) != http.StatusNotFound {
		t.Fatalf("unknown id: %v", err)
	}
	if _, err := f.client.List(ctx, "outbox", 0); statusOf(err) != http.StatusNotFound || !strings.Contains(err.Error(), "ingress or delivery") {
		t.Fatalf("unknown queue: %v", err)
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", f.socket)
	}}}
	cases := []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"GET", "/dlq/ingress?limit=0", "", 400, "invalid_parameter"},
		{"GET", "/dlq/ingress?limit=abc", "", 400, "invalid_parameter"},
		{"GET", "/dlq/ingress?limit=10001", "", 400, "invalid_parameter"},
		{"POST", "/dlq/ingress", "", 405, "method_not_allowed"},
		{"GET", "/dlq/ingress/replay", "", 404, "not_found"},
		{"DELETE", "/dlq/ingress/purge", "", 405, "method_not_allowed"},
		{"POST", "/dlq/ingress/replay", "{", 400, "malformed_json"},
		{"POST", "/dlq/ingress/replay", `{"idz":[]}`, 400, "malformed_json"},
		{"POST", "/dlq/ingress/replay", `{"ids":["1"],"all":true}`, 400, "invalid_parameter"},
		{"POST", "/dlq/ingress/purge", `{"ids":[""]}`, 400, "invalid_parameter"},
		{"POST", "/dlq/ingress/purge", `{}`, 400, "invalid_parameter"},
		{"GET", "/nope", "", 404, "not_found"},
		{"POST", "/dlq/delivery/replay", `{"ids":[]}`, 200, ""},
		{"POST", "/dlq/delivery/purge", `{"all":true}`, 200, ""},
	}
	for _, c := range cases {
		t.Run(c.method+c.path+c.body, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx, c.method, "http://admin"+c.path, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			if c.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, b)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("content type %q", ct)
			}
			if c.code != "" && !strings.Contains(string(b), `"code":"`+c.code+`"`) {
				t.Fatalf("body %s, want code %s", b, c.code)
			}
		})
	}
}

func TestListenSocket(t *testing.T) {
	ctx := ctxT(t)
	dir := shortDir(t)
	path := filepath.Join(dir, "a.sock")
	ln, err := admin.Listen(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	// A live listener answers: a second instance must refuse.
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := admin.Listen(ctx, path); !errors.Is(err, admin.ErrInUse) {
		t.Fatalf("second listen: %v, want ErrInUse", err)
	}
	ln.Close()
	<-accepted
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left after close: %v", err)
	}

	// A stale socket (its process gone) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	ln, err = admin.Listen(ctx, path)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	ln.Close()

	// A regular file is never removed.
	file := filepath.Join(dir, "f.sock")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Listen(ctx, file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listen over a regular file: %v", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("regular file touched: %q, %v", b, err)
	}
}

func TestClientNotRunning(t *testing.T) {
	ctx := ctxT(t)
	dir := shortDir(t)
	c := admin.NewClient(filepath.Join(dir, "none.sock"))
	if _, err := c.List(ctx, bus.QueueIngress, 0); !errors.Is(err, admin.ErrNotRunning) {
		t.Fatalf("no socket: %v, want ErrNotRunning", err)
	}
	// A stale socket file with nobody listening.
	path := filepath.Join(dir, "stale.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := admin.NewClient(path).List(ctx, bus.QueueIngress, 0); !errors.Is(err, admin.ErrNotRunning) {
		t.Fatalf("stale socket: %v, want ErrNotRunning", err)
	}
}
