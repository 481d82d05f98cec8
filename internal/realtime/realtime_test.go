package realtime

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/presence/memory"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

type emptyStore struct{}

func (emptyStore) PendingWithin(context.Context, string, string, int, int) (store.Page, error) {
	return store.Page{}, nil
}
func (emptyStore) Ack(context.Context, string, []string) (int, error) { return 0, nil }

// mux routes exact methods and paths on an http.ServeMux.
type mux struct{ m *http.ServeMux }

func (x mux) HandleFunc(method, path string, f http.HandlerFunc) { x.m.HandleFunc(method+" "+path, f) }

func newServer(t *testing.T, o Options) (*Server, *telemetry.Metrics, string) {
	t.Helper()
	return newServerWith(t, o, emptyStore{})
}

// newServerWith starts a realtime server on st and returns the URL of its
// WebSocket endpoint.
func newServerWith(t *testing.T, o Options, st Store) (*Server, *telemetry.Metrics, string) {
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
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 5 * time.Second
	}
	o.BacklogPage, o.MaxConnsPerUser, o.Heartbeat = 100, 4, time.Hour
	if o.SendQueue == 0 {
		o.SendQueue = 16
	}
	pr := memory.New(time.Minute)
	t.Cleanup(func() { pr.Close() })
	s := New(o, st, pr, testAuth)
	rt := mux{http.NewServeMux()}
	s.Mount(rt)
	hs := httptest.NewServer(rt.m)
	t.Cleanup(hs.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s, m, "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/connect"
}

// testAuth takes a token "<urn>" (valid for an hour) or "<urn>|<unix
// expiry>"; "bad" is refused.
func testAuth(tok string) (string, time.Time, error) {
	if tok == "bad" {
		return "", time.Time{}, errors.New("bad token")
	}
	user, exp, ok := strings.Cut(tok, "|")
	if !ok {
		return tok, time.Now().Add(time.Hour), nil
	}
	sec, err := strconv.ParseInt(exp, 10, 64)
	if err != nil {
		return "", time.Time{}, err
	}
	return user, time.Unix(sec, 0), nil
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
	s, m, url := newServer(t, Options{Config: Config{SendQueue: 8}})
	_ = dial(t, url, "urn:sm:user:slow") // never reads
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	payload := make([]byte, 60<<10)
	for i := 0; i < 400 && testutil.ToFloat64(m.WSDropped.WithLabelValues("slow_consumer")) == 0; i++ {
		s.Deliver(context.Background(), &envelope.Envelope{ID: envelope.NewIDs().New(time.Now()), Sender: "urn:sm:user:a",
			Recipient: "urn:sm:user:slow", Payload: payload, CreatedAt: envelope.Now()})
	}
	waitFor(t, "slow consumer closed", func() bool {
		return testutil.ToFloat64(m.WSDropped.WithLabelValues("slow_consumer")) == 1 && testutil.ToFloat64(m.WSConnections) == 0
	})
}

// A client that does not answer pings is disconnected after the pong timeout.
func TestUnansweredPingsDisconnect(t *testing.T) {
	_, m, url := newServer(t, Options{Config: Config{PingInterval: 20 * time.Millisecond, PongTimeout: 50 * time.Millisecond}})
	_ = dial(t, url, "urn:sm:user:silent") // never reads, so never answers pings
	waitFor(t, "pong timeout", func() bool {
		return testutil.ToFloat64(m.WSDropped.WithLabelValues("pong_timeout")) == 1 && testutil.ToFloat64(m.WSConnections) == 0
	})
}

// A client that reads (and so answers pings) stays connected across many pings.
func TestAnsweredPingsKeepTheConnection(t *testing.T) {
	// The pongs are all the client sends: the server's reader must not
	// wait after one for more (the I/O timeout is far shorter than the
	// wait for the message).
	s, m, url := newServer(t, Options{Config: Config{PingInterval: 20 * time.Millisecond, PongTimeout: 300 * time.Millisecond, WriteTimeout: 100 * time.Millisecond}})
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
		s.Deliver(context.Background(), &envelope.Envelope{ID: "late", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:alive",
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

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

// errorsAbout returns the text of every error record whose id attribute is id.
func (h *logRecorder) errorsAbout(id string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.recs {
		if r.Level != slog.LevelError {
			continue
		}
		var b strings.Builder
		b.WriteString(r.Message)
		match := false
		r.Attrs(func(a slog.Attr) bool {
			b.WriteString(" " + a.Key + "=" + a.Value.String())
			match = match || a.Key == "id" && a.Value.String() == id
			return true
		})
		if match {
			out = append(out, b.String())
		}
	}
	return out
}

// unencodable cannot be encoded into a frame: JSON times stop at year 9999.
func unencodable(id, recipient string, payload []byte) *envelope.Envelope {
	return &envelope.Envelope{ID: id, Sender: "urn:sm:user:a", Recipient: recipient, Payload: payload,
		CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
}

// backlogStore holds one page of pending envelopes.
type backlogStore struct{ envs []*envelope.Envelope }

func (b backlogStore) PendingWithin(context.Context, string, string, int, int) (store.Page, error) {
	return store.Page{Envelopes: b.envs}, nil
}
func (backlogStore) Ack(context.Context, string, []string) (int, error) { return 0, nil }

// checkEncodeFailureLogged fails unless exactly one error line names id and
// none carries the payload.
func checkEncodeFailureLogged(t *testing.T, logs *logRecorder, id string, payload []byte) {
	t.Helper()
	lines := logs.errorsAbout(id)
	if len(lines) != 1 || !strings.Contains(lines[0], "encode") {
		t.Fatalf("error lines about %s: %q, want one about the encoding", id, lines)
	}
	if strings.Contains(lines[0], string(payload)) || strings.Contains(lines[0], base64.StdEncoding.EncodeToString(payload)) {
		t.Fatalf("the log line carries the payload: %s", lines[0])
	}
}

// A live message that cannot be encoded is not sent, and says so in the
// log (with its id, never its payload); the next one is sent.
func TestLiveFrameEncodeFailureIsLogged(t *testing.T) {
	logs := &logRecorder{}
	s, m, url := newServer(t, Options{Logger: slog.New(logs)})
	c := dial(t, url, "urn:sm:user:bob")
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	payload := []byte("live-secret")
	s.Deliver(context.Background(), unencodable("bad-live", "urn:sm:user:bob", payload))
	checkEncodeFailureLogged(t, logs, "bad-live", payload)
	s.Deliver(context.Background(), &envelope.Envelope{ID: "good-live", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:bob",
		Payload: []byte("x"), CreatedAt: envelope.Now()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, data, err := c.Read(ctx); err != nil || !strings.Contains(string(data), `"good-live"`) {
		t.Fatalf("read: %s %v", data, err)
	}
}

// A backlog message that cannot be encoded is skipped with an error line
// (its id, never its payload); the rest of the backlog is sent.
func TestBacklogFrameEncodeFailureIsLogged(t *testing.T) {
	logs := &logRecorder{}
	payload := []byte("backlog-secret")
	st := backlogStore{envs: []*envelope.Envelope{
		unencodable("bad-backlog", "urn:sm:user:carol", payload),
		{ID: "good-backlog", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:carol", Payload: []byte("x"), CreatedAt: envelope.Now()},
	}}
	_, _, url := newServerWith(t, Options{Logger: slog.New(logs)}, st)
	c := dial(t, url, "urn:sm:user:carol")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, data, err := c.Read(ctx); err != nil || !strings.Contains(string(data), `"good-backlog"`) {
		t.Fatalf("read: %s %v", data, err)
	}
	checkEncodeFailureLogged(t, logs, "bad-backlog", payload)
}

// BenchmarkEncodeMessage encodes one live message frame (256-byte
// payload), once per delivered message.
func BenchmarkEncodeMessage(b *testing.B) {
	now := envelope.Now()
	env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob",
		Type: "chat", Payload: make([]byte, 256), CreatedAt: now}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodeMessage(env); err != nil {
			b.Fatal(err)
		}
	}
}

// A client that stops reading, with room left in its queue, is
// disconnected when a write times out, and that is counted with its reason.
func TestWriteTimeoutIsCounted(t *testing.T) {
	s, m, url := newServer(t, Options{Config: Config{SendQueue: 1 << 20}})
	_ = dial(t, url, "urn:sm:user:stuck") // never reads
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	payload := make([]byte, 60<<10)
	for range 400 { // 24 MB: more than the socket buffers hold
		s.Deliver(context.Background(), &envelope.Envelope{ID: envelope.NewIDs().New(time.Now()), Sender: "urn:sm:user:a",
			Recipient: "urn:sm:user:stuck", Payload: payload, CreatedAt: envelope.Now()})
	}
	// The write timeout is 5 s; the race detector slows the writer down.
	deadline := time.Now().Add(40 * time.Second)
	for testutil.ToFloat64(m.WSDropped.WithLabelValues("write_timeout")) != 1 || testutil.ToFloat64(m.WSConnections) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no write timeout counted: write_timeout %v, write_failed %v, connections %v",
				testutil.ToFloat64(m.WSDropped.WithLabelValues("write_timeout")),
				testutil.ToFloat64(m.WSDropped.WithLabelValues("write_failed")), testutil.ToFloat64(m.WSConnections))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := testutil.ToFloat64(m.WSDropped.WithLabelValues("slow_consumer")); n != 0 {
		t.Errorf("counted as slow consumer too (%v)", n)
	}
}

// A frame over realtime.max_frame_bytes closes the connection with 1009 and
// a reason stating the limit; a frame of exactly the limit is read.
func TestFrameTooBigReasonStatesLimit(t *testing.T) {
	_, m, url := newServer(t, Options{Config: Config{MaxFrameBytes: 1000}})
	c := dial(t, url, "urn:sm:user:big")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Not JSON, so answered with an error frame: proof that it was read.
	if err := c.Write(ctx, websocket.MessageText, []byte(strings.Repeat("x", 1000))); err != nil {
		t.Fatal(err)
	}
	if _, data, err := c.Read(ctx); err != nil || !strings.Contains(string(data), "error") {
		t.Fatalf("answer to a frame of the limit: %q, %v", data, err)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte(strings.Repeat("x", 1001))); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusMessageTooBig || !strings.Contains(ce.Reason, "1000 bytes") {
		t.Fatalf("read after a 1001-byte frame: %v", err)
	}
	if got := testutil.ToFloat64(m.WSDropped.WithLabelValues("frame_too_big")); got != 1 {
		t.Fatalf("frame_too_big drops: %v", got)
	}
	waitFor(t, "session ended", func() bool { return testutil.ToFloat64(m.WSConnections) == 0 })
}
