package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// sendAs posts a send body as user.
func sendAs(h http.Handler, user, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+user)
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// sendBody is a send to recipient of payload, with key when not "".
func sendBody(recipient string, payload []byte, ephemeral bool, key string) string {
	b, _ := json.Marshal(map[string]any{"recipient": recipient, "payload": payload, "ephemeral": ephemeral, "idempotency_key": key})
	if key == "" {
		b, _ = json.Marshal(map[string]any{"recipient": recipient, "payload": payload, "ephemeral": ephemeral})
	}
	return string(b)
}

func accepted(t *testing.T, w *httptest.ResponseRecorder) sendResponse {
	t.Helper()
	if w.Code != http.StatusAccepted {
		t.Fatalf("send: %d %s, want 202", w.Code, w.Body)
	}
	var r sendResponse
	if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func quotaExceeded(t *testing.T, w *httptest.ResponseRecorder, what string) {
	t.Helper()
	if w.Code != http.StatusTooManyRequests || !strings.Contains(w.Body.String(), `"code":"sender_quota_exceeded"`) {
		t.Fatalf("%s: %d %s, want 429 sender_quota_exceeded", what, w.Code, w.Body)
	}
	if ra := w.Header().Get("Retry-After"); ra != "" {
		t.Fatalf("%s: Retry-After %q on sender_quota_exceeded, want none", what, ra)
	}
}

// A sender with store.max_pending_per_sender messages pending, over any
// number of recipients (every well-formed URN is one), gets 429
// sender_quota_exceeded without Retry-After; the refused send stores
// nothing and is counted; ephemeral messages (never stored) are not
// counted; an ack makes room again. Other senders are not affected.
func TestSenderQuotaMessages(t *testing.T) {
	st := openSQLite(t)
	m := telemetry.NewMetrics()
	const max = 4
	h := mount(t, Options{Metrics: m}, route.Options{MaxPendingPerRecipient: 1000, MaxPendingPerSender: max, MaxPendingBytesPerSender: 1 << 20, Metrics: m}, st)
	const mallory = "urn:sm:user:mallory"
	var ids []string
	for i := range max {
		ids = append(ids, accepted(t, sendAs(h, mallory, sendBody(fmt.Sprintf("urn:x:y:random%d", i), []byte("hi"), false, ""))).ID)
	}
	quotaExceeded(t, sendAs(h, mallory, sendBody("urn:x:y:random99", []byte("hi"), false, "")), "send past the quota")
	quotaExceeded(t, sendAs(h, mallory, sendBody("urn:x:y:random100", []byte("hi"), false, "k")), "send with a key past the quota")
	if c, err := st.SenderPending(t.Context(), mallory); err != nil || c.Messages != max {
		t.Fatalf("mallory has %+v pending (%v), want %d messages: a refused send stored something", c, err, max)
	}
	if n, err := st.PendingCount(t.Context(), "urn:x:y:random99"); err != nil || n != 0 {
		t.Fatalf("refused recipient has %d pending (%v)", n, err)
	}
	if got := testutil.ToFloat64(m.SendsRefused.WithLabelValues("sender_quota_exceeded")); got != 2 {
		t.Fatalf("routing_sends_refused_total{reason=sender_quota_exceeded} = %v, want 2", got)
	}
	accepted(t, sendAs(h, mallory, sendBody("urn:x:y:random101", []byte("hi"), true, "")))
	accepted(t, sendAs(h, "urn:sm:user:alice", sendBody("urn:x:y:random0", []byte("hi"), false, "")))

	if n, err := st.Ack(t.Context(), "urn:x:y:random0", []string{ids[0]}); err != nil || n != 1 {
		t.Fatalf("ack: %d, %v", n, err)
	}
	accepted(t, sendAs(h, mallory, sendBody("urn:x:y:random102", []byte("hi"), false, "")))
	quotaExceeded(t, sendAs(h, mallory, sendBody("urn:x:y:random103", []byte("hi"), false, "")), "send past the quota again")
}

// The quota counts payload bytes too: a send that would take the sender's
// pending payload past store.max_pending_bytes_per_sender is refused, a
// smaller one that fits is accepted, and acks give the bytes back.
func TestSenderQuotaBytes(t *testing.T) {
	st := openSQLite(t)
	h := mount(t, Options{}, route.Options{MaxPendingPerSender: 1000, MaxPendingBytesPerSender: 1000}, st)
	const mallory = "urn:sm:user:mallory"
	p300 := bytes.Repeat([]byte{7}, 300)
	var ids []string
	for i := range 3 {
		ids = append(ids, accepted(t, sendAs(h, mallory, sendBody(fmt.Sprintf("urn:x:y:r%d", i), p300, false, ""))).ID)
	}
	quotaExceeded(t, sendAs(h, mallory, sendBody("urn:x:y:r3", p300, false, "")), "900 + 300 bytes of 1000")
	accepted(t, sendAs(h, mallory, sendBody("urn:x:y:r4", bytes.Repeat([]byte{7}, 100), false, ""))) // 1000 exactly
	quotaExceeded(t, sendAs(h, mallory, sendBody("urn:x:y:r5", []byte{1}, false, "")), "1000 + 1 bytes of 1000")
	if c, err := st.SenderPending(t.Context(), mallory); err != nil || c != (store.SenderCount{Messages: 4, Bytes: 1000}) {
		t.Fatalf("mallory has %+v pending (%v), want 4 messages of 1000 bytes", c, err)
	}
	if _, err := st.Ack(t.Context(), "urn:x:y:r1", []string{ids[1]}); err != nil {
		t.Fatal(err)
	}
	accepted(t, sendAs(h, mallory, sendBody("urn:x:y:r6", p300, false, "")))
}

// An idempotency key answers its first accepted message, whatever a later
// body with it says (a client may encrypt a message again before it
// retries), and delivers nothing of the later body. While the first
// message is not accepted (its attempt failed and could not release the
// key), the same message is accepted under the key's id, and another one
// is refused with 409 idempotency_key_reused and Retry-After; once the
// first message is stored, another body gets the key's answer.
func TestIdempotencyKeyReuse(t *testing.T) {
	st := openSQLite(t)
	putFails := new(atomic.Bool)
	pub := &publisher{}
	s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 16}}, route.Options{MaxPayloadBytes: 1 << 10}, &keyFailures{Store: st, putFails: putFails}, pub)
	h := NewRouter(nil, nil)
	s.Mount(h)
	const alice, bob = "urn:sm:user:alice", "urn:sm:user:bob"

	first := accepted(t, sendAs(h, alice, sendBody(bob, []byte("first"), false, "k1")))
	again := accepted(t, sendAs(h, alice, sendBody(bob, []byte("first"), false, "k1")))
	other := accepted(t, sendAs(h, alice, sendBody(bob, []byte("encrypted again"), false, "k1")))
	if again != first || other != first {
		t.Fatalf("answers %+v, %+v; want the first %+v for every send with the key", again, other, first)
	}
	if p, err := st.Pending(t.Context(), bob, "", 10); err != nil || len(p.Envelopes) != 1 || string(p.Envelopes[0].Payload) != "first" {
		t.Fatalf("bob's queue after three sends with one key: %v, %v; want the first message only", p.Envelopes, err)
	}

	// The first attempt with k2 fails and leaves the key reserved.
	putFails.Store(true)
	if w := sendAs(h, alice, sendBody(bob, []byte("second"), false, "k2")); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("send with the store failing: %d %s", w.Code, w.Body)
	}
	putFails.Store(false)
	w := sendAs(h, alice, sendBody(bob, []byte("not the second"), false, "k2"))
	if w.Code != http.StatusConflict || !strings.Contains(w.Body.String(), `"code":"idempotency_key_reused"`) || w.Header().Get("Retry-After") == "" {
		t.Fatalf("another message with a reserved key: %d %s (Retry-After %q), want 409 idempotency_key_reused with Retry-After",
			w.Code, w.Body, w.Header().Get("Retry-After"))
	}
	second := accepted(t, sendAs(h, alice, sendBody(bob, []byte("second"), false, "k2")))
	if again := accepted(t, sendAs(h, alice, sendBody(bob, []byte("not the second"), false, "k2"))); again != second {
		t.Fatalf("another body once the key's message is accepted: %+v, want %+v", again, second)
	}
	p, err := st.Pending(t.Context(), bob, "", 10)
	if err != nil || len(p.Envelopes) != 2 || p.Envelopes[1].ID != second.ID || string(p.Envelopes[1].Payload) != "second" {
		t.Fatalf("bob's queue: %v, %v; want the second message under id %s", p.Envelopes, err, second.ID)
	}

	// Stored, but the key was never marked: another body gets its answer.
	direct := &envelope.Envelope{ID: "01JSTOREDUNMARKED", Sender: alice, Recipient: bob, Payload: []byte("third"), CreatedAt: envelope.Now()}
	if _, _, err := st.ReserveIdempotency(t.Context(), store.Idempotency{Sender: alice, Key: "k3", ID: direct.ID, CreatedAt: direct.CreatedAt, RequestHash: store.EnvelopeHash(direct)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMessages(t.Context(), []*envelope.Envelope{direct}); err != nil {
		t.Fatal(err)
	}
	if r := accepted(t, sendAs(h, alice, sendBody(bob, []byte("something else"), false, "k3"))); r.ID != direct.ID {
		t.Fatalf("another body for a stored message: id %s, want %s", r.ID, direct.ID)
	}
}

// keyFailures is a store whose PutNew fails while putFails is set, and
// whose ReleaseIdempotency fails then too (a failed send leaves its key
// reserved).
type keyFailures struct {
	store.Store
	putFails *atomic.Bool
}

func (k *keyFailures) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	if k.putFails.Load() {
		return nil, errInjected
	}
	return k.Store.PutNew(ctx, msgs)
}

func (k *keyFailures) ReleaseIdempotency(ctx context.Context, sender, key string) error {
	if k.putFails.Load() {
		return errInjected
	}
	return k.Store.ReleaseIdempotency(ctx, sender, key)
}

// markerForms are the ways a payload's bytes could sit in a store: raw,
// hex, and base64 (standard and URL, at each of the three alignments the
// payload could start at in a longer encoded value).
func markerForms(marker, payload []byte) map[string][]byte {
	forms := map[string][]byte{
		"raw":     marker,
		"hex":     []byte(hex.EncodeToString(marker)),
		"HEX":     []byte(strings.ToUpper(hex.EncodeToString(marker))),
		"escaped": []byte(`\x` + hex.EncodeToString(marker)),
	}
	for shift := range 3 {
		shifted := append(make([]byte, shift), payload...)
		for name, enc := range map[string]*base64.Encoding{"base64": base64.StdEncoding, "base64url": base64.URLEncoding} {
			s := enc.EncodeToString(shifted)
			// A window from the middle: the encoding of whole repeats of
			// the marker, whatever came before the payload.
			forms[fmt.Sprintf("%s+%d", name, shift)] = []byte(s[64:128])
		}
	}
	return forms
}

// findMarker reports the form of the marker that data holds ("" if none).
func findMarker(data []byte, forms map[string][]byte) string {
	for name, f := range forms {
		if bytes.Contains(data, f) {
			return name
		}
	}
	return ""
}

// Ephemeral messages sent with idempotency keys leave no byte of their
// payload in the store: the idempotency records hold the answer and a hash
// of the request only. After such sends (and retries with the same keys),
// the whole SQLite file and its write-ahead log, and every row of every
// table of the PostgreSQL schema (as text, and each bytea column's bytes),
// hold no trace of a payload made of a random marker repeated, raw, hex or
// base64.
func TestEphemeralKeysLeaveNoPayloadInStore(t *testing.T) {
	for _, eng := range engines(t) {
		t.Run(eng.name, func(t *testing.T) {
			st := eng.open(t)
			h := mount(t, Options{}, route.Options{MaxPendingPerRecipient: 100, MaxPendingPerSender: 100, MaxPendingBytesPerSender: 1 << 20}, st)
			marker := make([]byte, 16)
			rand.Read(marker)
			payload := bytes.Repeat(marker, 256) // 4 KiB
			forms := markerForms(marker, payload)
			for i := range 5 {
				body := sendBody("urn:sm:user:bob", payload, true, fmt.Sprintf("ephemeral-%d", i))
				first := accepted(t, sendAs(h, "urn:sm:user:alice", body))
				if retry := accepted(t, sendAs(h, "urn:sm:user:alice", body)); retry != first {
					t.Fatalf("retry answered %+v, want %+v", retry, first)
				}
			}
			// A stored message without the marker, so the store is not empty.
			accepted(t, sendAs(h, "urn:sm:user:alice", sendBody("urn:sm:user:bob", []byte("plain"), false, "stored")))
			if c, err := st.SenderPending(t.Context(), "urn:sm:user:alice"); err != nil || c.Messages != 1 {
				t.Fatalf("alice has %+v pending (%v), want the one stored message", c, err)
			}
			if eng.name == "sqlite" {
				if err := st.Close(); err != nil {
					t.Fatal(err)
				}
				scanned := 0
				for _, p := range []string{st.path, st.path + "-wal"} {
					data, err := os.ReadFile(p)
					if os.IsNotExist(err) {
						continue
					}
					if err != nil {
						t.Fatal(err)
					}
					scanned += len(data)
					if f := findMarker(data, forms); f != "" {
						t.Errorf("%s holds the payload (%s)", p, f)
					}
				}
				if scanned == 0 {
					t.Fatal("no store file to scan")
				}
				return
			}
			scanSchema(t, st, forms)
		})
	}
}

// scanSchema looks for the marker in every row of every table of the
// store's PostgreSQL schema, as text and in each bytea column.
func scanSchema(t *testing.T, st *openStore, forms map[string][]byte) {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, st.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE'`, st.schema)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) < 5 {
		t.Fatalf("schema %s has tables %v: not the store's", st.schema, tables)
	}
	rowsSeen := 0
	for _, table := range tables {
		ident := pgx.Identifier{st.schema, table}.Sanitize()
		rows, err := conn.Query(ctx, "SELECT t::text FROM "+ident+" t")
		if err != nil {
			t.Fatal(err)
		}
		texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		rowsSeen += len(texts)
		for _, text := range texts {
			if f := findMarker([]byte(text), forms); f != "" {
				t.Errorf("a row of %s holds the payload (%s)", table, f)
			}
		}
		rows, err = conn.Query(ctx, `SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 AND data_type = 'bytea'`, st.schema, table)
		if err != nil {
			t.Fatal(err)
		}
		cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, col := range cols {
			rows, err := conn.Query(ctx, "SELECT "+pgx.Identifier{col}.Sanitize()+" FROM "+ident)
			if err != nil {
				t.Fatal(err)
			}
			values, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range values {
				if f := findMarker(v, forms); f != "" {
					t.Errorf("column %s of %s holds the payload (%s)", col, table, f)
				}
			}
		}
	}
	if rowsSeen == 0 {
		t.Fatal("no row scanned")
	}
}
