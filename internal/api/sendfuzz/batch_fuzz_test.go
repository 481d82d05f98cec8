package sendfuzz_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store"
)

// countingStore is acceptingStore counting the messages it is given to
// store.
type countingStore struct {
	acceptingStore
	puts *atomic.Int64
}

func (s countingStore) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	s.puts.Add(int64(len(msgs)))
	return s.acceptingStore.PutNew(ctx, msgs)
}

// Whatever the body of a batch, the answer is 202 with one answer per
// message of the request, all of them stored in one call, or a 4xx JSON
// error that stores nothing, whose index (when it names one) is a message
// of the batch: never a 5xx, never a panic.
func FuzzBatchRequest(f *testing.F) {
	f.Add(`{"messages":[{"recipient":"urn:sm:user:bob","payload":"aGk="},{"recipient":"urn:sm:user:carol","payload":"aGk=","idempotency_key":"k2"}]}`, "application/json")
	f.Add(`{"messages":[{"recipient":"urn:sm:user:bob","payload":"aGk=","idempotency_key":"k"},{"recipient":"urn:sm:user:bob","payload":"aGk=","idempotency_key":"k"}]}`, "application/json")
	f.Add(`{"messages":[{"recipient":"urn:sm:user:bob","payload":"aGk=","ephemeral":true}]}`, "application/json")
	f.Add(`{"messages":[{"recipient":"bob","payload":"aGk="}]}`, "application/json")
	f.Add(`{"messages":[]}`, "application/json")
	f.Add(`{"messages":[1,2,3]} {}`, "application/json; charset=utf-8")
	f.Add(`[{"recipient":"urn:sm:user:bob","payload":"aGk="}]`, "text/plain")
	puts := new(atomic.Int64)
	st := countingStore{puts: puts}
	core := route.New(route.Options{MaxPayloadBytes: 1 << 10, AcceptTimeout: 5 * time.Second, MaxPendingPerRecipient: 10}, st, nil, publisher{})
	s := api.New(api.Options{Config: api.Config{MaxBodyBytes: 1 << 12, MaxBatch: 8, MaxBatchBodyBytes: 1 << 14}}, st, core,
		func(tok string) (string, error) { return tok, nil })
	rt := api.NewRouter(nil, nil)
	s.Mount(rt)
	f.Fuzz(func(t *testing.T, body, contentType string) {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages/batch", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
		req.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		before := puts.Load()
		rt.ServeHTTP(w, req)
		stored := puts.Load() - before
		var in struct {
			Messages []json.RawMessage `json:"messages"`
		}
		_ = json.Unmarshal([]byte(body), &in)
		switch {
		case w.Code == http.StatusAccepted:
			var out struct {
				Messages []struct{ ID string } `json:"messages"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || len(out.Messages) != len(in.Messages) || len(out.Messages) == 0 {
				t.Fatalf("body %q: 202 %s, want one answer per message", body, w.Body)
			}
			if stored != int64(len(in.Messages)) {
				t.Fatalf("body %q: 202 after storing %d of %d messages", body, stored, len(in.Messages))
			}
		case w.Code >= 400 && w.Code < 500:
			var e struct {
				Error *struct {
					Code  string `json:"code"`
					Index *int   `json:"index"`
				} `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == nil || e.Error.Code == "" {
				t.Fatalf("%d without a JSON error: %s", w.Code, w.Body)
			}
			if e.Error.Index != nil && (*e.Error.Index < 0 || *e.Error.Index >= 8) {
				t.Fatalf("body %q: error names message %d, not one of a batch of at most 8", body, *e.Error.Index)
			}
			if stored != 0 {
				t.Fatalf("body %q: %d %s after storing %d messages", body, w.Code, w.Body, stored)
			}
		default:
			t.Fatalf("body %q: status %d %s", body, w.Code, w.Body)
		}
	})
}
