package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store"
)

// commitThenFail is a store whose PutNew, while failNext is set, commits
// and then reports a failure (once): a send whose store write committed
// although its caller saw an error (a timeout, a lost connection).
type commitThenFail struct {
	store.Store
	failNext atomic.Bool
}

func (c *commitThenFail) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	stored, err := c.Store.PutNew(ctx, msgs)
	if err == nil && c.failNext.CompareAndSwap(true, false) {
		return nil, errInjected
	}
	return stored, err
}

// ackAs acknowledges ids as user through POST /v1/messages/ack.
func ackAs(t *testing.T, h http.Handler, user string, ids ...string) {
	t.Helper()
	body := `{"ids":["` + strings.Join(ids, `","`) + `"]}`
	req := httptest.NewRequest(http.MethodPost, "/v1/messages/ack", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+user)
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusNoContent {
		t.Fatalf("ack: %d %s, want 204", w.Code, w.Body)
	}
}

// A send retried with its idempotency key after the recipient
// acknowledged the message brings nothing back: the retry answers 202
// with the key's answer, stores nothing (nothing pending, no count) and
// publishes no routing event. On both engines, whether the first
// attempt's answer was a 202 the client lost, or a failure although its
// store write committed, or the message was stored by a release before
// claims, which reserved the key and stored the message without
// publishing the record.
func TestRetryAfterAckBringsNothingBack(t *testing.T) {
	const alice, bob = "urn:sm:user:alice", "urn:sm:user:bob"
	for _, eng := range engines(t) {
		t.Run(eng.name, func(t *testing.T) {
			st := &commitThenFail{Store: eng.open(t)}
			pub := &publisher{}
			s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 16}}, route.Options{MaxPayloadBytes: 1 << 10,
				MaxPendingPerRecipient: 100, MaxPendingPerSender: 100}, st, pub)
			h := NewRouter(nil, nil)
			s.Mount(h)
			published := func() []string {
				pub.mu.Lock()
				defer pub.mu.Unlock()
				return slices.Clone(pub.ids)
			}
			nothingPending := func(when string) {
				t.Helper()
				if _, p := fetch(t, h, bob, ""); len(p.Messages) != 0 {
					t.Fatalf("%s: bob has %d pending, want none", when, len(p.Messages))
				}
				if n, err := st.PendingCount(t.Context(), bob); err != nil || n != 0 {
					t.Fatalf("%s: PendingCount %d, %v; want 0", when, n, err)
				}
				if c, err := st.SenderPending(t.Context(), alice); err != nil || c.Messages != 0 {
					t.Fatalf("%s: alice has %+v pending (%v), want nothing", when, c, err)
				}
			}

			t.Run("answer lost", func(t *testing.T) {
				body := sendBody(bob, []byte("lost answer"), false, "lost")
				first := accepted(t, sendAs(h, alice, body))
				ackAs(t, h, bob, first.ID)
				before := published()
				if again := accepted(t, sendAs(h, alice, body)); again != first {
					t.Fatalf("retry answered %+v, want %+v", again, first)
				}
				nothingPending("after the retry")
				if got := published(); !slices.Equal(got, before) {
					t.Fatalf("the retry published %v", got[len(before):])
				}
			})

			t.Run("failed although stored", func(t *testing.T) {
				body := sendBody(bob, []byte("stored, answered 503"), false, "committed")
				st.failNext.Store(true)
				if w := sendAs(h, alice, body); w.Code != http.StatusServiceUnavailable {
					t.Fatalf("send whose put fails after its commit: %d %s, want 503", w.Code, w.Body)
				}
				// Stored all the same (the sweep routes it): the recipient
				// fetches and acknowledges it.
				_, p := fetch(t, h, bob, "")
				if len(p.Messages) != 1 {
					t.Fatalf("bob has %d pending, want the message stored by the failed attempt", len(p.Messages))
				}
				ackAs(t, h, bob, p.Messages[0].ID)
				before := published()
				if again := accepted(t, sendAs(h, alice, body)); again.ID != p.Messages[0].ID {
					t.Fatalf("retry answered id %s, want the stored message's %s", again.ID, p.Messages[0].ID)
				}
				nothingPending("after the retry")
				if got := published(); !slices.Equal(got, before) {
					t.Fatalf("the retry published %v", got[len(before):])
				}
			})

			t.Run("stored by a release before claims", func(t *testing.T) {
				env := &envelope.Envelope{ID: "01JSTOREDBYOLDRELEASE", Sender: alice, Recipient: bob, Payload: []byte("old release"), CreatedAt: envelope.Now()}
				rec := store.Idempotency{Sender: alice, Key: "old", ID: env.ID, CreatedAt: env.CreatedAt, RequestHash: store.EnvelopeHash(env)}
				if _, ok, err := st.ReserveIdempotency(t.Context(), rec); err != nil || !ok {
					t.Fatal(ok, err)
				}
				if _, err := st.PutMessages(t.Context(), []*envelope.Envelope{env}); err != nil {
					t.Fatal(err)
				}
				ackAs(t, h, bob, env.ID)
				before := published()
				again := accepted(t, sendAs(h, alice, sendBody(bob, env.Payload, false, "old")))
				if again.ID != env.ID {
					t.Fatalf("retry answered id %s, want %s", again.ID, env.ID)
				}
				nothingPending("after the retry")
				if got := published(); !slices.Equal(got, before) {
					t.Fatalf("the retry published %v", got[len(before):])
				}
				// The record is published now: the next retry answers
				// without a store write.
				if got, _, err := st.ReserveIdempotency(t.Context(), rec); err != nil || !got.Published {
					t.Fatalf("record after the retry: %+v, %v; want published", got, err)
				}
			})
		})
	}
}
