package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/pkg/client"
)

const secret = "test-secret-0123456789-0123456789-abcdef"

// service runs one instance of the service in this process on the embedded
// default; it stops when the test ends.
type service struct {
	api, ws string
}

func startService(t *testing.T) service {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.API.Listen = "127.0.0.1:0"
	cfg.Realtime.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = "127.0.0.1:0"
	cfg.Auth.Leeway = 0
	cfg.Push.WebPush.Enabled = false
	cfg.API.RateLimit = 0
	cfg.JWTSecret = secret
	cfg.FillDefaults()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("service run: %v", err)
		}
	})
	return service{api: "http://" + a.APIAddr(), ws: "ws://" + a.WSAddr()}
}

func token(t *testing.T, sub string) string {
	t.Helper()
	tok, err := auth.Sign([]byte(secret), sub, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// proxy forwards TCP connections to target until cut. While mute is set
// it drops what the target sends back.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	n      atomic.Int64 // connections accepted
	mute   atomic.Bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.cut() })
	return p
}

func (p *proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.n.Add(1)
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(out, in); out.Close() }()
		go func() {
			defer in.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := out.Read(buf)
				if n > 0 && !p.mute.Load() {
					if _, werr := in.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// cut closes every forwarded connection (the listener keeps accepting).
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func nextT(t *testing.T, s *client.Stream) client.Envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	env, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("next: %v", err)
	}
	return env
}

func send(t *testing.T, c *client.Client, to, text string) string {
	t.Helper()
	acc, err := c.Send(ctxT(t), client.Message{Recipient: to, Payload: []byte(text)})
	if err != nil {
		t.Fatal(err)
	}
	return acc.ID
}

// A cut connection is reopened; the unacknowledged message the server sends
// again on the new connection is not returned twice.
func TestStreamReconnectsAndDeduplicates(t *testing.T) {
	svc := startService(t)
	px := startProxy(t, strings.TrimPrefix(svc.ws, "ws://"))
	alice := &client.Client{APIURL: svc.api, Token: token(t, "urn:sm:user:alice")}
	bob := &client.Client{APIURL: svc.api, WSURL: "ws://" + px.ln.Addr().String(), Token: token(t, "urn:sm:user:bob")}

	var drops atomic.Int64
	sub := bob.Stream(client.StreamOptions{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		OnState: func(connected bool, err error) {
			if !connected {
				drops.Add(1)
			}
		}})
	defer sub.Close()

	id1 := send(t, alice, "urn:sm:user:bob", "one")
	if got := nextT(t, sub); got.ID != id1 {
		t.Fatalf("first message %s, want %s", got.ID, id1)
	}
	px.cut()
	id2 := send(t, alice, "urn:sm:user:bob", "two")
	// The new connection's backlog holds id1 (not acknowledged) and id2:
	// only id2 is new.
	if got := nextT(t, sub); got.ID != id2 {
		t.Fatalf("after the cut: got %s (%q), want %s", got.ID, got.Payload, id2)
	}
	if px.n.Load() < 2 {
		t.Fatalf("proxy saw %d connections, want a reconnect", px.n.Load())
	}
	if drops.Load() < 1 {
		t.Fatal("OnState did not report the dropped connection")
	}
	if err := sub.Ack(ctxT(t), id1, id2); err != nil {
		t.Fatal(err)
	}
	id3 := send(t, alice, "urn:sm:user:bob", "three")
	if got := nextT(t, sub); got.ID != id3 {
		t.Fatalf("third message %s, want %s", got.ID, id3)
	}
}

// With AutoAck a returned message leaves the queue without a call to Ack.
func TestStreamAutoAck(t *testing.T) {
	svc := startService(t)
	alice := &client.Client{APIURL: svc.api, Token: token(t, "urn:sm:user:alice")}
	bob := &client.Client{APIURL: svc.api, WSURL: svc.ws, Token: token(t, "urn:sm:user:bob")}
	sub := bob.Stream(client.StreamOptions{AutoAck: true})
	defer sub.Close()
	id := send(t, alice, "urn:sm:user:bob", "hi")
	if got := nextT(t, sub); got.ID != id {
		t.Fatalf("got %s, want %s", got.ID, id)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := bob.Fetch(ctxT(t), "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Messages) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("message still pending after auto-ack: %+v", p.Messages)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeWS is a WebSocket endpoint whose behaviour per connection the test
// decides, recording the token of each upgrade.
type fakeWS struct {
	mu     sync.Mutex
	tokens []string
	handle func(n int, tok string, w http.ResponseWriter, r *http.Request)
}

func (f *fakeWS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.mu.Lock()
	f.tokens = append(f.tokens, tok)
	n := len(f.tokens)
	f.mu.Unlock()
	f.handle(n, tok, w, r)
}

func (f *fakeWS) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.tokens...)
}

func messageFrame(id string) []byte {
	b, _ := json.Marshal(map[string]any{"type": "message", "message": map[string]any{
		"id": id, "sender": "urn:sm:user:alice", "recipient": "urn:sm:user:bob", "payload": "aGk=",
		"created_at": time.Now().UTC()}})
	return b
}

// A session closed with 1008 "token expired" is reopened with the token
// RenewToken returns.
func TestStreamRenewsExpiredToken(t *testing.T) {
	f := &fakeWS{handle: func(n int, tok string, w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		if tok == "old" {
			c.Close(websocket.StatusPolicyViolation, "token expired")
			return
		}
		_ = c.Write(r.Context(), websocket.MessageText, messageFrame("m1"))
		_, _, _ = c.Read(r.Context())
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	var renewals atomic.Int64
	c := &client.Client{WSURL: "ws" + strings.TrimPrefix(srv.URL, "http"), Token: "old",
		RenewToken: func(context.Context) (string, error) { renewals.Add(1); return "new", nil }}
	sub := c.Stream(client.StreamOptions{MinBackoff: time.Millisecond})
	defer sub.Close()
	if got := nextT(t, sub); got.ID != "m1" {
		t.Fatalf("got %q, want m1", got.ID)
	}
	if n := renewals.Load(); n != 1 {
		t.Fatalf("RenewToken called %d times, want 1", n)
	}
	if got := f.seen(); len(got) != 2 || got[0] != "old" || got[1] != "new" {
		t.Fatalf("tokens seen by the server %v, want [old new]", got)
	}

	// Without RenewToken the expiry ends the stream.
	c2 := &client.Client{WSURL: c.WSURL, Token: "old"}
	sub2 := c2.Stream(client.StreamOptions{MinBackoff: time.Millisecond})
	defer sub2.Close()
	if _, err := sub2.Next(ctxT(t)); !errors.Is(err, client.ErrTokenExpired) {
		t.Fatalf("without RenewToken: err %v, want ErrTokenExpired", err)
	}
}

// A 401 at the upgrade or on an HTTP call is retried once with a renewed
// token; a 403 is final and not retried.
func TestRenewOn401AndFinal403(t *testing.T) {
	f := &fakeWS{handle: func(n int, tok string, w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Origin") == "https://evil.example":
			http.Error(w, `{"error":{"code":"origin_not_allowed","message":"origin not allowed"}}`, http.StatusForbidden)
		case tok != "new":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":{"code":"unauthorized","message":"token expired"}}`))
		case r.URL.Path == "/v1/messages":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte(`{"id":"x1","created_at":"2026-01-01T00:00:00Z"}`))
		default:
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			_ = c.Write(r.Context(), websocket.MessageText, messageFrame("m1"))
			_, _, _ = c.Read(r.Context())
		}
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	renew := func(context.Context) (string, error) { return "new", nil }
	c := &client.Client{APIURL: srv.URL, WSURL: "ws" + strings.TrimPrefix(srv.URL, "http"), Token: "old", RenewToken: renew}
	acc, err := c.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("x")})
	if err != nil || acc.ID != "x1" {
		t.Fatalf("send after renewal: %+v %v", acc, err)
	}
	c2 := &client.Client{WSURL: c.WSURL, Token: "old", RenewToken: renew}
	sub := c2.Stream(client.StreamOptions{MinBackoff: time.Millisecond})
	defer sub.Close()
	if got := nextT(t, sub); got.ID != "m1" {
		t.Fatalf("got %q, want m1", got.ID)
	}

	before := len(f.seen())
	hc := &http.Client{Transport: originTransport{"https://evil.example"}}
	c3 := &client.Client{WSURL: c.WSURL, Token: "new", HTTP: hc}
	sub3 := c3.Stream(client.StreamOptions{MinBackoff: time.Millisecond})
	defer sub3.Close()
	_, err = sub3.Next(ctxT(t))
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusForbidden {
		t.Fatalf("refused origin: err %v, want a 403 *client.Error", err)
	}
	if n := len(f.seen()) - before; n != 1 {
		t.Fatalf("a 403 was tried %d times, want 1", n)
	}
}

type originTransport struct{ origin string }

func (o originTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Origin", o.origin)
	return http.DefaultTransport.RoundTrip(r)
}

func TestBackoffBounds(t *testing.T) {
	for _, tc := range []struct {
		attempt  int
		min, max time.Duration
		ceiling  time.Duration
	}{
		{0, 100 * time.Millisecond, time.Second, 100 * time.Millisecond},
		{3, 100 * time.Millisecond, time.Second, 800 * time.Millisecond},
		{10, 100 * time.Millisecond, time.Second, time.Second},
		{62, 100 * time.Millisecond, time.Second, time.Second},
	} {
		distinct := map[time.Duration]bool{}
		for range 200 {
			d := client.Backoff(tc.attempt, tc.min, tc.max)
			if d < 0 || d >= tc.ceiling {
				t.Fatalf("Backoff(%d, %v, %v) = %v, want in [0, %v)", tc.attempt, tc.min, tc.max, d, tc.ceiling)
			}
			distinct[d] = true
		}
		if len(distinct) < 50 {
			t.Fatalf("Backoff(%d) gave %d distinct waits in 200: no jitter", tc.attempt, len(distinct))
		}
	}
}

// Against the service: a session whose token expires is closed by the
// server (1008 "token expired"); the stream renews the token and goes on.
func TestStreamRenewsWhenTheServiceEndsTheSession(t *testing.T) {
	svc := startService(t)
	alice := &client.Client{APIURL: svc.api, Token: token(t, "urn:sm:user:alice")}
	short, err := auth.Sign([]byte(secret), "urn:sm:user:bob", 2*time.Second, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var renewals atomic.Int64
	var expired atomic.Bool
	bob := &client.Client{APIURL: svc.api, WSURL: svc.ws, Token: short,
		RenewToken: func(context.Context) (string, error) { renewals.Add(1); return token(t, "urn:sm:user:bob"), nil }}
	st := bob.Stream(client.StreamOptions{AutoAck: true, MinBackoff: 10 * time.Millisecond, OnState: func(connected bool, err error) {
		var ce websocket.CloseError
		if !connected && errors.As(err, &ce) && ce.Code == websocket.StatusPolicyViolation && ce.Reason == "token expired" {
			expired.Store(true)
		}
	}})
	defer st.Close()
	id1 := send(t, alice, "urn:sm:user:bob", "before expiry")
	if got := nextT(t, st); got.ID != id1 {
		t.Fatalf("got %s, want %s", got.ID, id1)
	}
	// Next blocks through the expiry: the server ends the session, the
	// stream renews and reconnects, and the message sent meanwhile arrives.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		deadline := time.Now().Add(15 * time.Second)
		for !expired.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		_, _ = alice.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("after expiry")})
	}()
	got, err := st.Next(ctx)
	if err != nil {
		t.Fatalf("next after expiry: %v", err)
	}
	if string(got.Payload) != "after expiry" {
		t.Fatalf("got %q, want the message sent after the expiry", got.Payload)
	}
	if !expired.Load() {
		t.Fatal("the session did not end with 1008 token expired")
	}
	if renewals.Load() != 1 {
		t.Fatalf("RenewToken called %d times, want 1", renewals.Load())
	}
}
