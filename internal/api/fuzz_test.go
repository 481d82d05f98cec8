package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/store"
)

// reservingStore accepts every put and every idempotency reservation.
type reservingStore struct{ acceptingStore }

func (reservingStore) ReserveIdempotency(_ context.Context, rec store.Idempotency) (store.Idempotency, bool, error) {
	return rec, true, nil
}
func (reservingStore) MarkPublished(context.Context, string, string) error { return nil }
func (reservingStore) PendingCount(context.Context, string) (int, error)   { return 0, nil }

// Whatever the body of a send, the answer is 202 or a 4xx JSON error:
// never a 5xx, never a panic.
func FuzzSendRequest(f *testing.F) {
	f.Add(`{"recipient":"urn:sm:user:bob","payload":"aGk="}`, "application/json")
	f.Add(`{"recipient":"urn:sm:user:bob","payload":"aGk=","type":"chat","ephemeral":true,"idempotency_key":"k-1"}`, "application/json")
	f.Add(`{"recipient":"bob","payload":"aGk="}`, "application/json")
	f.Add(`{"recipient":"urn:sm:user:bob","payload":"!!"}`, "application/json; charset=utf-8")
	f.Add(`[]`, "text/plain")
	s := New(Options{MaxBodyBytes: 1 << 12, MaxPayloadBytes: 1 << 10, PublishTimeout: 5 * time.Second, MaxPendingPerRecipient: 10},
		reservingStore{}, &publisher{}, func(tok string) (string, error) { return tok, nil })
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	f.Fuzz(func(t *testing.T, body, contentType string) {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
		req.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		switch {
		case w.Code == http.StatusAccepted:
		case w.Code >= 400 && w.Code < 500:
			if !strings.Contains(w.Body.String(), `"error":{"code":"`) {
				t.Fatalf("%d without a JSON error: %s", w.Code, w.Body)
			}
		default:
			t.Fatalf("body %q: status %d %s", body, w.Code, w.Body)
		}
	})
}
