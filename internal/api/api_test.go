package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

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

// find returns the attributes of the first record at level with message msg.
func (h *logRecorder) find(level slog.Level, msg string) (map[string]string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if r.Level != level || r.Message != msg {
			continue
		}
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.String()
			return true
		})
		return attrs, true
	}
	return nil, false
}

// all returns every record's message and attributes as text.
func (h *logRecorder) all() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, r := range h.recs {
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			b.WriteString(" " + a.Key + "=" + a.Value.String())
			return true
		})
		b.WriteString("\n")
	}
	return b.String()
}

var errInjected = errors.New("injected store failure")

// failingIdempotencies is a real SQLite store whose MarkPublished and
// ReleaseIdempotency fail, and whose PutNew fails while putFails is set.
type failingIdempotencies struct {
	*sqlite.Store
	putFails *atomic.Bool
}

func (f failingIdempotencies) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	if f.putFails.Load() {
		return nil, errInjected
	}
	return f.Store.PutNew(ctx, msgs)
}

func (failingIdempotencies) MarkPublished(context.Context, string, string) error { return errInjected }
func (failingIdempotencies) ReleaseIdempotency(context.Context, string, string) error {
	return errInjected
}

// testStore is what a test's API and its routing core need of a store.
type testStore interface {
	Store
	route.Store
}

// newServer returns the API over a routing core of its own (ro, with a
// 5 s accept timeout unless set; st; pub as its bus), with the test's
// authentication: the token is the subject.
func newServer(o Options, ro route.Options, st testStore, pub route.Bus) *Server {
	if ro.AcceptTimeout == 0 {
		ro.AcceptTimeout = 5 * time.Second
	}
	return New(o, st, route.New(ro, st, nil, pub), func(tok string) (string, error) { return tok, nil })
}

// publisher is the bus of a test's routing core: it keeps the ids of the
// routing events published, and fails while failing is set.
type publisher struct {
	mu      sync.Mutex
	failing bool
	ids     []string
}

func (p *publisher) PublishIngress(_ context.Context, m *bus.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failing {
		return errors.New("bus down")
	}
	p.ids = append(p.ids, m.ID)
	return nil
}

func (p *publisher) ReceiveIngressBatch(context.Context, int, bus.BatchHandler) error { return nil }
func (p *publisher) PublishDeliveries(context.Context, []bus.Delivery) error          { return nil }

// The idempotency bookkeeping around accepting a message can fail without
// failing the request; each failure is logged at warn with the message id,
// never the payload.
func TestIdempotencyStoreFailuresAreLogged(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs := &logRecorder{}
	pub := &publisher{}
	putFails := new(atomic.Bool)
	putFails.Store(true)
	s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 16}}, route.Options{MaxPayloadBytes: 1 << 10, Logger: slog.New(logs)},
		failingIdempotencies{st, putFails}, pub)
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	const payload = "c2VjcmV0LWNpcGhlcnRleHQ=" // never logged
	send := func(key string, ephemeral bool) *httptest.ResponseRecorder {
		body := `{"recipient":"urn:sm:user:bob","payload":"` + payload + `","idempotency_key":"` + key + `","ephemeral":` + strconv.FormatBool(ephemeral) + `}`
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		return w
	}

	// Storing fails and so does releasing the key.
	if w := send("k1", false); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("send with the store down: %d %s", w.Code, w.Body)
	}
	attrs, ok := logs.find(slog.LevelWarn, "idempotency release failed")
	if !ok || attrs["id"] == "" || !strings.Contains(attrs["err"], errInjected.Error()) {
		t.Fatalf("no warning with id and error for the failed release; logs:\n%s", logs.all())
	}
	firstID := attrs["id"]

	// A retry with the key finds it reserved but not accepted: it accepts
	// the first attempt's envelope, and the put that stores it marks the
	// record published (MarkPublished, failing, is not needed).
	putFails.Store(false)
	if w := send("k1", false); w.Code != http.StatusAccepted || !strings.Contains(w.Body.String(), firstID) {
		t.Fatalf("retry: %d %s, want 202 with id %s", w.Code, w.Body, firstID)
	}
	if len(pub.ids) != 1 || pub.ids[0] != firstID {
		t.Fatalf("published %v, want [%s]", pub.ids, firstID)
	}
	rec, fresh, err := st.ReserveIdempotency(t.Context(), store.Idempotency{Sender: "urn:sm:user:alice", Key: "k1", ID: "01JPROBE", CreatedAt: time.Now(), RequestHash: []byte{1}})
	if err != nil || fresh || rec.ID != firstID || !rec.Published {
		t.Fatalf("record after the retry: %+v, fresh %v, %v; want %s published", rec, fresh, err, firstID)
	}
	if _, ok := logs.find(slog.LevelWarn, "idempotency mark published failed"); ok {
		t.Fatalf("a stored message's record was marked apart; logs:\n%s", logs.all())
	}

	// An ephemeral message is not stored: its record is marked once it is
	// published, and that failing is logged.
	w := send("k2", true)
	if w.Code != http.StatusAccepted {
		t.Fatalf("ephemeral send: %d %s, want 202", w.Code, w.Body)
	}
	attrs, ok = logs.find(slog.LevelWarn, "idempotency mark published failed")
	if !ok || attrs["id"] == "" || !strings.Contains(w.Body.String(), attrs["id"]) || !strings.Contains(attrs["err"], errInjected.Error()) {
		t.Fatalf("no warning with the ephemeral message's id and error for the failed mark; logs:\n%s", logs.all())
	}
	if all := logs.all(); strings.Contains(all, payload) || strings.Contains(all, "secret-ciphertext") {
		t.Fatalf("a log line carries the payload:\n%s", all)
	}
}

// The store is where a message becomes durable: once it is stored, the
// message is accepted (202) even when its routing event cannot be
// published, and it waits as pending (and unrouted, for the sweep). An
// ephemeral message is never stored, so with the bus down it is refused.
func TestAcceptedOnceStoredEvenWithTheBusDown(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pub := &publisher{failing: true}
	s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 16}}, route.Options{MaxPayloadBytes: 1 << 10}, st, pub)
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	send := func(body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		return w
	}
	if w := send(`{"recipient":"urn:sm:user:bob","payload":"aGk="}`); w.Code != http.StatusAccepted {
		t.Fatalf("send with the bus down: %d %s, want 202", w.Code, w.Body)
	}
	page, err := st.Pending(t.Context(), "urn:sm:user:bob", "", 10)
	if err != nil || len(page.Envelopes) != 1 {
		t.Fatalf("pending after the send: %d, %v; want 1", len(page.Envelopes), err)
	}
	unrouted, err := st.Unrouted(t.Context(), time.Now().Add(time.Minute), 10)
	if err != nil || len(unrouted) != 1 || unrouted[0].ID != page.Envelopes[0].ID {
		t.Fatalf("unrouted after the send: %v, %v; want the message", unrouted, err)
	}
	if w := send(`{"recipient":"urn:sm:user:bob","payload":"aGk=","ephemeral":true}`); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("ephemeral send with the bus down: %d %s, want 503", w.Code, w.Body)
	}
}

// acceptingStore accepts every put and does nothing else.
type acceptingStore struct{ testStore }

func (acceptingStore) PutMessages(context.Context, []*envelope.Envelope) ([]bool, error) {
	return nil, nil
}

func (acceptingStore) PutNew(_ context.Context, msgs []store.NewMessage) ([]bool, error) {
	stored := make([]bool, len(msgs))
	for i := range stored {
		stored[i] = true
	}
	return stored, nil
}

// BenchmarkSend is the send handler on its own (authentication stubbed,
// store and bus answering at once): JSON decode, validation, envelope
// encode, the store and publish calls, the JSON answer. 256-byte payload.
func BenchmarkSend(b *testing.B) {
	s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 17}}, route.Options{MaxPayloadBytes: 1 << 16}, acceptingStore{}, &publisher{})
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	body := `{"recipient":"urn:sm:user:bob","payload":"` + strings.Repeat("A", 344) + `"}`
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// countingStore accepts every put and answers every count with zero.
type countingStore struct{ acceptingStore }

func (countingStore) PendingCount(context.Context, string) (int, error) { return 0, nil }
func (countingStore) SenderPending(context.Context, string) (store.SenderCount, error) {
	return store.SenderCount{}, nil
}

// BenchmarkSendWithQuotas is BenchmarkSend with the default per-recipient
// and per-sender caps on, as served: the counts come from the store once
// and then from memory while far below the caps.
func BenchmarkSendWithQuotas(b *testing.B) {
	s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 17}}, route.Options{MaxPayloadBytes: 1 << 16,
		MaxPendingPerRecipient: 10000, MaxPendingPerSender: 100000, MaxPendingBytesPerSender: 1 << 30},
		countingStore{}, &publisher{})
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	body := `{"recipient":"urn:sm:user:bob","payload":"` + strings.Repeat("A", 344) + `"}`
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// A recipient whose queue holds store.max_pending_per_recipient messages
// gets no more: sends answer 429 recipient_queue_full without Retry-After,
// store nothing and are counted; an idempotent retry of a message accepted
// before the queue filled still gets its 202; once the recipient
// acknowledges, sends are accepted again; ephemeral messages (never
// stored) are not capped.
func TestRecipientQueueFull(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := telemetry.NewMetrics()
	const max = 3
	s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 16}, Metrics: m}, route.Options{MaxPayloadBytes: 1 << 10,
		MaxPendingPerRecipient: max, Metrics: m}, st, &publisher{})
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	send := func(body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer urn:sm:user:mallory")
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		return w
	}
	var first string
	for i := range max {
		body := `{"recipient":"urn:sm:user:bob","payload":"aGk="}`
		if i == 0 {
			body = `{"recipient":"urn:sm:user:bob","payload":"aGk=","idempotency_key":"k0"}`
		}
		w := send(body)
		if w.Code != http.StatusAccepted {
			t.Fatalf("send %d: %d %s, want 202", i, w.Code, w.Body)
		}
		if i == 0 {
			first = w.Body.String()
		}
	}
	w := send(`{"recipient":"urn:sm:user:bob","payload":"aGk="}`)
	if w.Code != http.StatusTooManyRequests || !strings.Contains(w.Body.String(), `"code":"recipient_queue_full"`) {
		t.Fatalf("send to a full queue: %d %s, want 429 recipient_queue_full", w.Code, w.Body)
	}
	if ra := w.Header().Get("Retry-After"); ra != "" {
		t.Fatalf("Retry-After %q on recipient_queue_full, want none", ra)
	}
	if n, err := st.PendingCount(t.Context(), "urn:sm:user:bob"); err != nil || n != max {
		t.Fatalf("bob has %d pending (%v), want %d: the refused send stored something", n, err, max)
	}
	if got := testutil.ToFloat64(m.SendsRefused.WithLabelValues("recipient_queue_full")); got != 1 {
		t.Fatalf("routing_sends_refused_total{reason=recipient_queue_full} = %v, want 1", got)
	}
	if w := send(`{"recipient":"urn:sm:user:bob","payload":"aGk=","idempotency_key":"k0"}`); w.Code != http.StatusAccepted || w.Body.String() != first {
		t.Fatalf("idempotent retry: %d %s, want 202 %s", w.Code, w.Body, first)
	}
	if w := send(`{"recipient":"urn:sm:user:bob","payload":"aGk=","idempotency_key":"k1"}`); w.Code != http.StatusTooManyRequests {
		t.Fatalf("new key to a full queue: %d %s, want 429", w.Code, w.Body)
	}
	if w := send(`{"recipient":"urn:sm:user:carol","payload":"aGk="}`); w.Code != http.StatusAccepted {
		t.Fatalf("send to another recipient: %d %s, want 202", w.Code, w.Body)
	}
	if w := send(`{"recipient":"urn:sm:user:bob","payload":"aGk=","ephemeral":true}`); w.Code != http.StatusAccepted {
		t.Fatalf("ephemeral send to a full queue: %d %s, want 202", w.Code, w.Body)
	}
	page, err := st.Pending(t.Context(), "urn:sm:user:bob", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Ack(t.Context(), "urn:sm:user:bob", []string{page.Envelopes[0].ID}); err != nil {
		t.Fatal(err)
	}
	if w := send(`{"recipient":"urn:sm:user:bob","payload":"aGk="}`); w.Code != http.StatusAccepted {
		t.Fatalf("send after an ack: %d %s, want 202", w.Code, w.Body)
	}
}

// writeAccepted writes what web.WriteJSON writes for a sendResponse.
func TestWriteAcceptedIsWriteJSON(t *testing.T) {
	for _, c := range []struct {
		id string
		at time.Time
	}{
		{"01J9Z3ABCDEFGHJKMNPQRSTVWX", time.Date(2026, 11, 27, 10, 0, 0, 123e6, time.UTC)},
		{"01J9Z3ABCDEFGHJKMNPQRSTVWX", time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)},
		{"01J9Z3ABCDEFGHJKMNPQRSTVWX", time.Date(2026, 11, 27, 10, 0, 0, 5e6, time.FixedZone("X", 3600))},
		{`odd"id`, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		got, want := httptest.NewRecorder(), httptest.NewRecorder()
		writeAccepted(got, c.id, c.at)
		web.WriteJSON(want, http.StatusAccepted, sendResponse{ID: c.id, CreatedAt: c.at})
		if got.Code != want.Code || got.Body.String() != want.Body.String() ||
			got.Header().Get("Content-Type") != want.Header().Get("Content-Type") ||
			got.Header().Get("X-Content-Type-Options") != want.Header().Get("X-Content-Type-Options") {
			t.Errorf("%q %v: %d %q, want %d %q", c.id, c.at, got.Code, got.Body, want.Code, want.Body)
		}
	}
}
