package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
	"github.com/go-routing-service/routingservice/internal/web"
)

// batchServer is the API over a SQLite store of the test's and a routing
// core with ro, and a function that posts a body to path as alice.
func batchServer(t *testing.T, o Options, ro route.Options) (*sqlite.Store, *publisher, func(path, body, contentType string) *httptest.ResponseRecorder) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pub := &publisher{}
	if ro.MaxPayloadBytes == 0 {
		ro.MaxPayloadBytes = 1 << 10
	}
	s := newServer(o, ro, st, pub)
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	return st, pub, func(path, body, contentType string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
		req.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		return w
	}
}

// item is a batch message to who with payload "hi", and key when not "".
func item(who, key string) string {
	s := `{"recipient":"urn:sm:user:` + who + `","payload":"aGk=","type":"chat"`
	if key != "" {
		s += `,"idempotency_key":"` + key + `"`
	}
	return s + "}"
}

// pending returns how many messages who has pending.
func pending(t *testing.T, st *sqlite.Store, who string) int {
	t.Helper()
	page, err := st.Pending(t.Context(), "urn:sm:user:"+who, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	return len(page.Envelopes)
}

func batchOf(items ...string) string { return `{"messages":[` + strings.Join(items, ",") + `]}` }

type batchAnswer struct {
	Messages []struct {
		ID        string `json:"id"`
		CreatedAt string `json:"created_at"`
	} `json:"messages"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Index   *int   `json:"index"`
	} `json:"error"`
}

func decodeAnswer(t *testing.T, w *httptest.ResponseRecorder) batchAnswer {
	t.Helper()
	var a batchAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
		t.Fatalf("answer %d %q is not JSON: %v", w.Code, w.Body, err)
	}
	return a
}

// A batch is accepted as a whole: 202 with each message's id and time in
// the order of the request, every message stored for its recipient.
func TestBatchAcceptsEveryMessageInOrder(t *testing.T) {
	st, pub, post := batchServer(t, Options{Config: Config{MaxBodyBytes: 1 << 12}}, route.Options{})
	w := post("/v1/messages/batch", batchOf(item("bob", ""), item("carol", "k1"), item("bob", "k2")), "application/json")
	if w.Code != http.StatusAccepted {
		t.Fatalf("batch: %d %s, want 202", w.Code, w.Body)
	}
	a := decodeAnswer(t, w)
	if len(a.Messages) != 3 {
		t.Fatalf("answer %s, want 3 messages", w.Body)
	}
	bob, err := st.Pending(t.Context(), "urn:sm:user:bob", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	carol, err := st.Pending(t.Context(), "urn:sm:user:carol", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(bob.Envelopes) != 2 || len(carol.Envelopes) != 1 ||
		bob.Envelopes[0].ID != a.Messages[0].ID || carol.Envelopes[0].ID != a.Messages[1].ID || bob.Envelopes[1].ID != a.Messages[2].ID {
		t.Fatalf("answered %s; stored bob %d, carol %d: want the answers in request order", w.Body, len(bob.Envelopes), len(carol.Envelopes))
	}
	if bob.Envelopes[0].Sender != "urn:sm:user:alice" || bob.Envelopes[0].Type != "chat" {
		t.Fatalf("stored %+v, want alice's chat message", bob.Envelopes[0])
	}
	if len(pub.ids) != 3 {
		t.Fatalf("published %d routing events, want 3", len(pub.ids))
	}
}

// Bad input accepts nothing: a bad message answers 400 (413 for its
// payload) naming its index; a batch over its count or body limit 413; a
// key twice 400; a body that is not a batch 400 or 415.
func TestBatchBadInputAcceptsNothing(t *testing.T) {
	big := `{"recipient":"urn:sm:user:bob","payload":"` + strings.Repeat("A", 1500) + `"}`
	cases := []struct {
		name        string
		body        string
		contentType string
		status      int
		code        string
		index       int // -1: none
	}{
		{"bad recipient", batchOf(item("bob", ""), `{"recipient":"bob","payload":"aGk="}`), "", http.StatusBadRequest, web.CodeInvalidRecipient, 1},
		{"bad payload", batchOf(item("bob", ""), item("carol", ""), `{"recipient":"urn:sm:user:bob","payload":"!!"}`), "", http.StatusBadRequest, web.CodeInvalidPayload, 2},
		{"payload too large", batchOf(item("bob", ""), big), "", http.StatusRequestEntityTooLarge, web.CodePayloadTooLarge, 1},
		{"message not an object", batchOf(item("bob", ""), `5`), "", http.StatusBadRequest, web.CodeBadJSON, 1},
		{"field of the wrong type", batchOf(`{"recipient":7,"payload":"aGk="}`), "", http.StatusBadRequest, web.CodeBadJSON, 0},
		{"ephemeral message", batchOf(item("bob", ""), `{"recipient":"urn:sm:user:bob","payload":"aGk=","ephemeral":true}`), "", http.StatusBadRequest, web.CodeInvalidParameter, 1},
		{"a key twice", batchOf(item("bob", "k1"), item("carol", "k2"), item("dave", "k1")), "", http.StatusBadRequest, web.CodeInvalidParameter, 2},
		{"more than max_batch", batchOf(item("a", ""), item("b", ""), item("c", ""), item("d", ""), item("e", "")), "", http.StatusRequestEntityTooLarge, web.CodeBatchTooLarge, -1},
		{"body over max_batch_body_bytes", batchOf(big, big, big, big), "", http.StatusRequestEntityTooLarge, web.CodeBodyTooLarge, -1},
		{"no messages", `{"messages":[]}`, "", http.StatusBadRequest, web.CodeInvalidParameter, -1},
		{"messages null", `{"messages":null}`, "", http.StatusBadRequest, web.CodeInvalidParameter, -1},
		{"no messages member", `{"other":[1,2]}`, "", http.StatusBadRequest, web.CodeInvalidParameter, -1},
		{"not an object", `[` + item("bob", "") + `]`, "", http.StatusBadRequest, web.CodeBadJSON, -1},
		{"messages not an array", `{"messages":{"recipient":"urn:sm:user:bob"}}`, "", http.StatusBadRequest, web.CodeBadJSON, -1},
		{"messages twice", `{"messages":[` + item("bob", "") + `],"messages":[` + item("carol", "") + `]}`, "", http.StatusBadRequest, web.CodeBadJSON, -1},
		{"data after the value", batchOf(item("bob", "")) + `{}`, "", http.StatusBadRequest, web.CodeBadJSON, -1},
		{"cut short", batchOf(item("bob", ""))[:30], "", http.StatusBadRequest, web.CodeBadJSON, -1},
		{"empty body", ``, "", http.StatusBadRequest, web.CodeBadJSON, -1},
		{"not JSON", batchOf(item("bob", "")), "text/plain", http.StatusUnsupportedMediaType, web.CodeUnsupportedMedia, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, pub, post := batchServer(t, Options{Config: Config{MaxBodyBytes: 1 << 10, MaxBatch: 4, MaxBatchBodyBytes: 4 << 10}}, route.Options{MaxPayloadBytes: 1 << 10})
			ct := tc.contentType
			if ct == "" {
				ct = "application/json"
			}
			w := post("/v1/messages/batch", tc.body, ct)
			a := decodeAnswer(t, w)
			if w.Code != tc.status || a.Error == nil || a.Error.Code != tc.code || a.Error.Message == "" {
				t.Fatalf("%d %s, want %d %s", w.Code, w.Body, tc.status, tc.code)
			}
			switch {
			case tc.index < 0 && a.Error.Index != nil:
				t.Fatalf("answer %s names index %d, want none", w.Body, *a.Error.Index)
			case tc.index >= 0 && (a.Error.Index == nil || *a.Error.Index != tc.index):
				t.Fatalf("answer %s, want index %d", w.Body, tc.index)
			}
			for _, who := range []string{"bob", "carol", "dave", "a"} {
				if n := pending(t, st, who); n != 0 {
					t.Fatalf("refused, yet %d stored for %s", n, who)
				}
			}
			if len(pub.ids) != 0 {
				t.Fatalf("refused, yet %d published", len(pub.ids))
			}
		})
	}
}

// A batch sent again with its keys answers as the first time and stores
// no second copy.
func TestBatchRepeatedWithKeysStoresNothingTwice(t *testing.T) {
	st, pub, post := batchServer(t, Options{Config: Config{MaxBodyBytes: 1 << 12}}, route.Options{})
	body := batchOf(item("bob", "m1-bob"), item("carol", "m1-carol"))
	first := post("/v1/messages/batch", body, "application/json")
	again := post("/v1/messages/batch", body, "application/json")
	if first.Code != http.StatusAccepted || again.Code != http.StatusAccepted || first.Body.String() != again.Body.String() {
		t.Fatalf("first %d %s, again %d %s: want the same 202", first.Code, first.Body, again.Code, again.Body)
	}
	for _, who := range []string{"bob", "carol"} {
		if n := pending(t, st, who); n != 1 {
			t.Fatalf("%s has %d pending, want 1", who, n)
		}
	}
	if len(pub.ids) != 2 {
		t.Fatalf("published %d, want 2", len(pub.ids))
	}
}

// A recipient whose queue has no room refuses the batch with 429
// recipient_queue_full naming its first message.
func TestBatchRecipientQueueFullNamesItsIndex(t *testing.T) {
	st, _, post := batchServer(t, Options{Config: Config{MaxBodyBytes: 1 << 12}}, route.Options{MaxPendingPerRecipient: 2})
	w := post("/v1/messages/batch", batchOf(item("bob", ""), item("carol", ""), item("carol", ""), item("carol", "")), "application/json")
	a := decodeAnswer(t, w)
	if w.Code != http.StatusTooManyRequests || a.Error == nil || a.Error.Code != web.CodeRecipientQueueFull || a.Error.Index == nil || *a.Error.Index != 1 {
		t.Fatalf("%d %s, want 429 recipient_queue_full with index 1", w.Code, w.Body)
	}
	if w.Header().Get("Retry-After") != "" {
		t.Fatalf("Retry-After %q on recipient_queue_full, want none", w.Header().Get("Retry-After"))
	}
	if n := pending(t, st, "bob"); n != 0 {
		t.Fatalf("refused, yet bob has %d pending", n)
	}
}

// A batch has its own body limit: a body over api.max_body_bytes that a
// single send would be refused for is accepted within
// api.max_batch_body_bytes.
func TestBatchBodyLimitIsItsOwn(t *testing.T) {
	_, _, post := batchServer(t, Options{Config: Config{MaxBodyBytes: 1 << 10, MaxBatchBodyBytes: 64 << 10}}, route.Options{})
	items := make([]string, 40)
	for i := range items {
		items[i] = item("r"+strconv.Itoa(i), "")
	}
	body := batchOf(items...)
	if len(body) <= 1<<10 {
		t.Fatalf("the batch is %d bytes, want more than max_body_bytes", len(body))
	}
	if w := post("/v1/messages/batch", body, "application/json"); w.Code != http.StatusAccepted {
		t.Fatalf("batch of %d bytes: %d %s, want 202", len(body), w.Code, w.Body)
	}
	single := `{"recipient":"urn:sm:user:bob","payload":"aGk=","type":"` + strings.Repeat("x", 1<<10) + `"}`
	if w := post("/v1/messages", single, "application/json"); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("single send over max_body_bytes: %d, want 413", w.Code)
	}
}

// A batch is one request for the per-user rate limit.
func TestBatchIsOneRequestForTheRateLimit(t *testing.T) {
	_, _, post := batchServer(t, Options{Config: Config{MaxBodyBytes: 1 << 12, RateLimit: 0.001, RateBurst: 2}}, route.Options{})
	if w := post("/v1/messages/batch", batchOf(item("a", ""), item("b", ""), item("c", "")), "application/json"); w.Code != http.StatusAccepted {
		t.Fatalf("first batch: %d %s", w.Code, w.Body)
	}
	if w := post("/v1/messages/batch", batchOf(item("a", ""), item("b", ""), item("c", "")), "application/json"); w.Code != http.StatusAccepted {
		t.Fatalf("second batch within the burst of 2: %d %s", w.Code, w.Body)
	}
	w := post("/v1/messages/batch", batchOf(item("a", "")), "application/json")
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("third batch: %d %s, want 429 with Retry-After", w.Code, w.Body)
	}
}
