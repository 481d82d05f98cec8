// Package sendfuzz fuzzes the send handler of the API on its own, with a
// store and a bus that accept everything (a package apart, so that the
// fuzzing build does not instrument the store engines).
package sendfuzz_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store"
)

// acceptingStore accepts every put and idempotency reservation; the
// handler uses nothing else of it on a send.
type acceptingStore struct{ stores }

// stores is what the API and its routing core need of a store.
type stores interface {
	api.Store
	route.Store
}

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
func (acceptingStore) ReserveIdempotency(_ context.Context, rec store.Idempotency) (store.Idempotency, bool, error) {
	return rec, true, nil
}
func (acceptingStore) MarkPublished(context.Context, string, string) error { return nil }
func (acceptingStore) PendingCount(context.Context, string) (int, error)   { return 0, nil }

type publisher struct{}

func (publisher) PublishIngress(context.Context, *bus.Message) error               { return nil }
func (publisher) ReceiveIngressBatch(context.Context, int, bus.BatchHandler) error { return nil }
func (publisher) PublishDeliveries(context.Context, []bus.Delivery) error          { return nil }

// Whatever the body of a send, the answer is 202 or a 4xx JSON error:
// never a 5xx, never a panic.
func FuzzSendRequest(f *testing.F) {
	f.Add(`{"recipient":"urn:sm:user:bob","payload":"aGk="}`, "application/json")
	f.Add(`{"recipient":"urn:sm:user:bob","payload":"aGk=","type":"chat","ephemeral":true,"idempotency_key":"k-1"}`, "application/json")
	f.Add(`{"recipient":"bob","payload":"aGk="}`, "application/json")
	f.Add(`{"recipient":"urn:sm:user:bob","payload":"!!"}`, "application/json; charset=utf-8")
	f.Add(`[]`, "text/plain")
	st := acceptingStore{}
	core := route.New(route.Options{MaxPayloadBytes: 1 << 10, AcceptTimeout: 5 * time.Second, MaxPendingPerRecipient: 10}, st, nil, publisher{})
	s := api.New(api.Options{Config: api.Config{MaxBodyBytes: 1 << 12}}, st, core, func(tok string) (string, error) { return tok, nil })
	rt := api.NewRouter(nil, nil)
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
