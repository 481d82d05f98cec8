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
	batches atomic.Int64 // POST /v1/messages/batch requests
	wsSends atomic.Int64 // send frames
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
		id := f.deliver(sub, m.Recipient, m.Payload)
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"id": id})
	case "POST /v1/messages/batch":
		var b struct {
			Messages []struct {
				Recipient string `json:"recipient"`
				Payload   []byte `json:"payload"`
			} `json:"messages"`
		}
		if json.NewDecoder(r.Body).Decode(&b) != nil {
			http.Error(w, `{"error":{"code":"bad_request"}}`, 400)
			return
		}
		f.batches.Add(1)
		out := make([]map[string]string, len(b.Messages))
		for i, m := range b.Messages {
			out[i] = map[string]string{"id": f.deliver(sub, m.Recipient, m.Payload)}
		}
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]any{"messages": out})
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
			var a struct {
				Type    string
				IDs     []string
				Ref     string
				Message struct {
					Recipient string `json:"recipient"`
					Payload   []byte `json:"payload"`
				}
			}
			_ = json.Unmarshal(b, &a)
			if a.Type == "send" {
				f.wsSends.Add(1)
				id := f.deliver(sub, a.Message.Recipient, a.Message.Payload)
				frame, _ := json.Marshal(map[string]any{"type": "sent", "ref": a.Ref, "id": id, "created_at": time.Now().UTC()})
				_ = c.Write(context.Background(), websocket.MessageText, frame)
				continue
			}
			f.ack(sub, a.IDs)
		}
	default:
		http.NotFound(w, r)
	}
}

// deliver accepts a message of sub's to recipient and writes it to the
// recipient's connections (unless it is one to drop); it returns its id.
func (f *fakeService) deliver(sub, recipient string, payload []byte) string {
	f.mu.Lock()
	f.seq++
	id := strconv.Itoa(f.seq)
	env := map[string]any{"id": id, "sender": sub, "recipient": recipient, "payload": payload}
	f.pending[recipient] = append(f.pending[recipient], env)
	conns := f.conns[recipient]
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
	return id
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

// online -send ws sends every message as a send frame over the senders'
// WebSockets, several in flight, and every one is delivered.
func TestOnlineOverWebSocketAgainstFake(t *testing.T) {
	f, srv := newFake(t, 0)
	e := testEnv(t, srv, "online", "-send", "ws", "-inflight", "4", "-recipients", "5", "-senders", "2", "-duration", "300ms", "-rate", "400", "-drain", "5s")
	s, err := runDelivery(context.Background(), e, 1)
	if err != nil {
		t.Fatal(err)
	}
	if s.Accepted == 0 || s.Missing != 0 || s.Deliveries != s.Accepted || len(s.Errors) != 0 {
		t.Fatalf("summary: %+v", s)
	}
	if got := f.wsSends.Load(); got != s.Offered {
		t.Fatalf("%d send frames for %d messages offered, want every message over the WebSocket", got, s.Offered)
	}
}

// group sends batches of -size messages, each to another recipient; every
// message is delivered and the send latency is one per batch.
func TestGroupAgainstFake(t *testing.T) {
	f, srv := newFake(t, 0)
	e := testEnv(t, srv, "group", "-size", "4", "-recipients", "6", "-senders", "2", "-duration", "300ms", "-rate", "200", "-drain", "5s")
	s, err := runDelivery(context.Background(), e, 1)
	if err != nil {
		t.Fatal(err)
	}
	if s.Accepted == 0 || s.Accepted%4 != 0 || s.Missing != 0 || s.Deliveries != s.Accepted || len(s.Errors) != 0 {
		t.Fatalf("summary: %+v", s)
	}
	if b := f.batches.Load(); b*4 != s.Offered || s.SendLatency == nil || int64(s.SendLatency.N) != b {
		t.Fatalf("%d batches for %d messages, %v send latencies: want one per batch of 4", b, s.Offered, s.SendLatency)
	}
}

func TestSendWayFlags(t *testing.T) {
	for _, args := range [][]string{
		{"online", "-send", "carrier-pigeon"},
		{"offline", "-send", "ws"},
		{"online", "-send", "ws", "-inflight", "0"},
		{"group", "-size", "0"},
		{"group", "-size", "11", "-recipients", "10"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
	if o, err := parseFlags([]string{"group", "-size", "100"}); err != nil || o.size != 100 || o.send != "http" {
		t.Errorf("group -size 100: %+v, %v", o, err)
	}
}
