package realtime

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/presence/memory"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

type emptyStore struct{}

func (emptyStore) Pending(context.Context, string, string, int) (store.Page, error) {
	return store.Page{}, nil
}
func (emptyStore) Ack(context.Context, string, []string) (int, error) { return 0, nil }

func newServer(t *testing.T, o Options) (*Server, *telemetry.Metrics, string) {
	t.Helper()
	m := telemetry.NewMetrics()
	o.Instance, o.Metrics = "self", m
	if o.MaxFrameBytes == 0 {
		o.MaxFrameBytes = 1 << 16
	}
	if o.PingInterval == 0 {
		o.PingInterval = time.Hour
	}
	if o.PongTimeout == 0 {
		o.PongTimeout = time.Second
	}
	o.WriteTimeout, o.BacklogPage, o.MaxConnsPerUser, o.Heartbeat = 5*time.Second, 100, 4, time.Hour
	if o.SendQueue == 0 {
		o.SendQueue = 16
	}
	pr := memory.New(time.Minute)
	t.Cleanup(func() { pr.Close() })
	s := New(o, emptyStore{}, pr, func(tok string) (string, error) { return tok, nil })
	rt := api.NewRouter(m, nil)
	s.Mount(rt)
	hs := httptest.NewServer(rt)
	t.Cleanup(hs.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s, m, "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/connect"
}

func dial(t *testing.T, url, user string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + user}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A client that stops reading while live messages pile up is disconnected
// once its queue is full, instead of holding memory without bound.
func TestSlowConsumerIsDisconnected(t *testing.T) {
	s, m, url := newServer(t, Options{SendQueue: 8})
	_ = dial(t, url, "urn:sm:user:slow") // never reads
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	payload := make([]byte, 60<<10)
	for i := 0; i < 400 && testutil.ToFloat64(m.WSDropped.WithLabelValues("slow_consumer")) == 0; i++ {
		s.Deliver(&envelope.Envelope{ID: envelope.NewIDs().New(time.Now()), Sender: "urn:sm:user:a",
			Recipient: "urn:sm:user:slow", Payload: payload, CreatedAt: envelope.Now()})
	}
	waitFor(t, "slow consumer closed", func() bool {
		return testutil.ToFloat64(m.WSDropped.WithLabelValues("slow_consumer")) == 1 && testutil.ToFloat64(m.WSConnections) == 0
	})
}

// A client that does not answer pings is disconnected after the pong timeout.
func TestUnansweredPingsDisconnect(t *testing.T) {
	_, m, url := newServer(t, Options{PingInterval: 20 * time.Millisecond, PongTimeout: 50 * time.Millisecond})
	_ = dial(t, url, "urn:sm:user:silent") // never reads, so never answers pings
	waitFor(t, "pong timeout", func() bool {
		return testutil.ToFloat64(m.WSDropped.WithLabelValues("pong_timeout")) == 1 && testutil.ToFloat64(m.WSConnections) == 0
	})
}

// A client that reads (and so answers pings) stays connected across many pings.
func TestAnsweredPingsKeepTheConnection(t *testing.T) {
	s, m, url := newServer(t, Options{PingInterval: 20 * time.Millisecond, PongTimeout: 300 * time.Millisecond})
	c := dial(t, url, "urn:sm:user:alive")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	// Deliver one message after many ping intervals, and well past the
	// point where unanswered pings would have closed the connection; the
	// reader answers pings while it waits for it.
	go func() {
		timer := time.NewTimer(time.Second)
		defer timer.Stop()
		<-timer.C
		s.Deliver(&envelope.Envelope{ID: "late", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:alive",
			Payload: []byte("x"), CreatedAt: envelope.Now()})
	}()
	if _, data, err := c.Read(ctx); err != nil || !strings.Contains(string(data), `"late"`) {
		t.Fatalf("read: %s %v", data, err)
	}
	if n := testutil.ToFloat64(m.WSDropped.WithLabelValues("pong_timeout")); n != 0 {
		t.Fatalf("disconnected for pong timeout while answering pings")
	}
}

// More connections of one user than allowed on an instance get 429.
func TestConnectionCapPerUser(t *testing.T) {
	_, _, url := newServer(t, Options{})
	for i := 0; i < 4; i++ {
		dial(t, url, "urn:sm:user:many")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer urn:sm:user:many"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("fifth connection: %v %v", resp, err)
	}
}

// Shutdown closes every connection with 1001 going away.
func TestShutdownClosesWithGoingAway(t *testing.T) {
	s, m, url := newServer(t, Options{})
	c := dial(t, url, "urn:sm:user:leaving")
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	read := make(chan error, 1)
	go func() { _, _, err := c.Read(ctx); read <- err }()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := websocket.CloseStatus(<-read); got != websocket.StatusGoingAway {
		t.Fatalf("close status %v, want 1001", got)
	}
}
