package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// fakeService is a tiny in-memory stand-in for the routing service: enough
// of the v1 contract to run the scenarios against (tokens are not verified,
// only their sub is read).
type fakeService struct {
	dropEvery int // every dropEvery-th message is accepted but never delivered

	mu      sync.Mutex
	seq     int
	conns   map[string][]*websocket.Conn
	pending map[string][]map[string]any
	acked   atomic.Int64
}

func newFake(t *testing.T, dropEvery int) (*fakeService, *httptest.Server) {
	f := &fakeService{dropEvery: dropEvery, conns: map[string][]*websocket.Conn{}, pending: map[string][]map[string]any{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func subOf(r *http.Request) string {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct{ Sub string }
	_ = json.Unmarshal(b, &c)
	return c.Sub
}

func (f *fakeService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sub := subOf(r)
	switch r.Method + " " + r.URL.Path {
	case "POST /v1/messages":
		var m struct {
			Recipient string `json:"recipient"`
			Payload   []byte `json:"payload"`
		}
		if json.NewDecoder(r.Body).Decode(&m) != nil {
			http.Error(w, `{"error":{"code":"bad_request"}}`, 400)
			return
		}
		f.mu.Lock()
		f.seq++
		id := strconv.Itoa(f.seq)
		env := map[string]any{"id": id, "sender": sub, "recipient": m.Recipient, "payload": m.Payload}
		f.pending[m.Recipient] = append(f.pending[m.Recipient], env)
		conns := f.conns[m.Recipient]
		drop := f.dropEvery > 0 && f.seq%f.dropEvery == 0
		f.mu.Unlock()
		if !drop {
			frame, _ := json.Marshal(map[string]any{"type": "message", "message": env})
			// Not the request's context: a sender that gives up on its
			// request must not close the recipients' sockets (a cancelled
			// write closes a websocket.Conn), as it does not on the service.
			wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for _, c := range conns {
				_ = c.Write(wctx, websocket.MessageText, frame)
			}
			cancel()
		}
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"id": id})
	case "GET /v1/messages":
		f.mu.Lock()
		msgs := append([]map[string]any{}, f.pending[sub]...)
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"messages": msgs, "next_cursor": ""})
	case "POST /v1/messages/ack":
		var a struct{ IDs []string }
		_ = json.NewDecoder(r.Body).Decode(&a)
		f.ack(sub, a.IDs)
		w.WriteHeader(http.StatusNoContent)
	case "GET /v1/connect":
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns[sub] = append(f.conns[sub], c)
		f.mu.Unlock()
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				return
			}
			var a struct{ IDs []string }
			_ = json.Unmarshal(b, &a)
			f.ack(sub, a.IDs)
		}
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeService) ack(sub string, ids []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acked.Add(int64(len(ids)))
	set := map[string]bool{}
	for _, id := range ids {
		set[id] = true
	}
	var keep []map[string]any
	for _, m := range f.pending[sub] {
		if !set[m["id"].(string)] {
			keep = append(keep, m)
		}
	}
	f.pending[sub] = keep
}

func testEnv(t *testing.T, srv *httptest.Server, args ...string) *env {
	o, err := parseFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	return &env{
		o:   o,
		t:   target{api: srv.URL, ws: "ws" + strings.TrimPrefix(srv.URL, "http"), secret: "test-secret", close: func() {}},
		log: io.Discard, hc: srv.Client(), wsc: wsHTTPClient(), tag: "t", ttl: time.Hour,
	}
}

func TestFanoutAgainstFake(t *testing.T) {
	f, srv := newFake(t, 0)
	e := testEnv(t, srv, "fanout", "-recipients", "5", "-conns", "3", "-senders", "4", "-duration", "300ms", "-rate", "400", "-drain", "5s")
	s, err := runDelivery(context.Background(), e, 3)
	if err != nil {
		t.Fatal(err)
	}
	if s.Accepted == 0 || s.Missing != 0 || s.Deliveries != 3*s.Accepted || s.Dropped != 0 || len(s.Errors) != 0 {
		t.Fatalf("summary: %+v", s)
	}
	if s.Latency == nil || s.Latency.N != int(s.Deliveries) {
		t.Errorf("latency %+v", s.Latency)
	}
	// Ack frames are written after the receipt is counted: wait for the
	// fake to read them.
	deadline := time.Now().Add(10 * time.Second)
	for f.acked.Load() != s.Deliveries && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := f.acked.Load(); got != s.Deliveries {
		t.Errorf("acked %d, want %d (every receipt)", got, s.Deliveries)
	}
}

func TestOnlineReportsMissing(t *testing.T) {
	_, srv := newFake(t, 10)
	e := testEnv(t, srv, "online", "-recipients", "3", "-senders", "2", "-duration", "200ms", "-rate", "200", "-drain", "300ms")
	s, err := runDelivery(context.Background(), e, 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := s.Accepted / 10; s.Missing != want || s.Deliveries != s.Accepted-want || len(s.MissingIDs) != int(min(want, 10)) {
		t.Errorf("accepted %d missing %d (%v) delivered %d; want %d missing", s.Accepted, s.Missing, s.MissingIDs, s.Deliveries, want)
	}
}

func TestOfflineAgainstFake(t *testing.T) {
	f, srv := newFake(t, 0)
	e := testEnv(t, srv, "offline", "-recipients", "4", "-senders", "3", "-messages", "120")
	s, err := runOffline(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	if s.Offered != 120 || s.Accepted != 120 || s.Missing != 0 || s.Offline.Fetched != 120 || s.Offline.Pages != 4 {
		t.Fatalf("summary %+v, offline %+v", s, s.Offline)
	}
	if f.acked.Load() != 120 {
		t.Errorf("acked %d", f.acked.Load())
	}
}
