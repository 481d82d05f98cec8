package client_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/pkg/client"
)

// pendingIDs returns the ids pending for c's user.
func pendingIDs(t *testing.T, c *client.Client) []string {
	t.Helper()
	p, err := c.Fetch(ctxT(t), "", 100)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(p.Messages))
	for i, m := range p.Messages {
		ids[i] = m.ID
	}
	return ids
}

// SendBatch sends many messages in one request, all accepted, answered in
// order; a batch with a bad message is refused whole with an *Error that
// names its index, and accepts nothing.
func TestSendBatch(t *testing.T) {
	svc := startService(t)
	alice := &client.Client{APIURL: svc.api, Token: token(t, "urn:sm:user:alice")}
	bob := &client.Client{APIURL: svc.api, Token: token(t, "urn:sm:user:bob")}
	carol := &client.Client{APIURL: svc.api, Token: token(t, "urn:sm:user:carol")}
	accs, err := alice.SendBatch(ctxT(t), []client.Message{
		{Recipient: "urn:sm:user:bob", Payload: []byte("to bob's phone"), Type: "chat", IdempotencyKey: "g1-bob"},
		{Recipient: "urn:sm:user:carol", Payload: []byte("to carol"), Type: "chat", IdempotencyKey: "g1-carol"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(accs) != 2 || accs[0].ID == "" || accs[0].ID == accs[1].ID {
		t.Fatalf("answers %+v, want two ids", accs)
	}
	if got := pendingIDs(t, bob); len(got) != 1 || got[0] != accs[0].ID {
		t.Fatalf("bob pending %v, want %s", got, accs[0].ID)
	}
	if got := pendingIDs(t, carol); len(got) != 1 || got[0] != accs[1].ID {
		t.Fatalf("carol pending %v, want %s", got, accs[1].ID)
	}
	// The same batch again: the same answers, no second copies.
	again, err := alice.SendBatch(ctxT(t), []client.Message{
		{Recipient: "urn:sm:user:bob", Payload: []byte("to bob's phone"), Type: "chat", IdempotencyKey: "g1-bob"},
		{Recipient: "urn:sm:user:carol", Payload: []byte("to carol"), Type: "chat", IdempotencyKey: "g1-carol"},
	})
	if err != nil || again[0] != accs[0] || again[1] != accs[1] {
		t.Fatalf("the batch again: %+v, %v; want %+v", again, err, accs)
	}
	if got := pendingIDs(t, bob); len(got) != 1 {
		t.Fatalf("bob pending %v after the batch again, want one copy", got)
	}

	_, err = alice.SendBatch(ctxT(t), []client.Message{
		{Recipient: "urn:sm:user:bob", Payload: []byte("fine")},
		{Recipient: "not-a-urn", Payload: []byte("bad")},
	})
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Code != "invalid_recipient" || e.Index != 1 {
		t.Fatalf("bad batch: %v, want 400 invalid_recipient naming message 1", err)
	}
	if got := pendingIDs(t, bob); len(got) != 1 {
		t.Fatalf("bob pending %v after the refused batch, want nothing more", got)
	}
	if _, err := alice.Send(ctxT(t), client.Message{Recipient: "bad"}); !errors.As(err, &e) || e.Index != -1 {
		t.Fatalf("a single send's error %v: want no index", err)
	}
}

// countingTransport counts the POST /v1/messages requests it carries.
type countingTransport struct{ sends atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && r.URL.Path == "/v1/messages" {
		c.sends.Add(1)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// receive runs s.Next until ctx ends, handing each message to got.
func receive(ctx context.Context, s *client.Stream, got chan<- client.Envelope) {
	for {
		env, err := s.Next(ctx)
		if err != nil {
			return
		}
		select {
		case got <- env:
		case <-ctx.Done():
			return
		}
	}
}

// A Stream sends over its connection while one is open, and the
// recipient gets the message live; with no connection it sends over
// HTTP. Over the socket a refused send is an *Error with the status and
// code the HTTP API answers with, and an idempotency key makes a second
// send answer as the first.
func TestStreamSendsOverTheSocket(t *testing.T) {
	svc := startService(t)
	rt := &countingTransport{}
	alice := &client.Client{APIURL: svc.api, WSURL: svc.ws, Token: token(t, "urn:sm:user:alice"), HTTP: &http.Client{Transport: rt}}
	bob := &client.Client{APIURL: svc.api, WSURL: svc.ws, Token: token(t, "urn:sm:user:bob")}

	as := alice.Stream(client.StreamOptions{})
	defer as.Close()
	// No connection yet: over HTTP.
	first, err := as.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("before connecting")})
	if err != nil || rt.sends.Load() != 1 {
		t.Fatalf("send without a connection: %v, %d HTTP sends; want one over HTTP", err, rt.sends.Load())
	}

	connected := make(chan struct{}, 4)
	as2 := alice.Stream(client.StreamOptions{OnState: func(up bool, _ error) {
		if up {
			connected <- struct{}{}
		}
	}})
	defer as2.Close()
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	go receive(ctx, as2, make(chan client.Envelope, 16))
	<-connected

	bs := bob.Stream(client.StreamOptions{AutoAck: true})
	defer bs.Close()
	if got := nextT(t, bs); got.ID != first.ID {
		t.Fatalf("bob's backlog %s, want %s", got.ID, first.ID)
	}
	acc, err := as2.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("over the socket"), Type: "chat", IdempotencyKey: "ws-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := nextT(t, bs); got.ID != acc.ID || string(got.Payload) != "over the socket" || got.Sender != "urn:sm:user:alice" {
		t.Fatalf("bob got %+v, want %s from alice", got, acc.ID)
	}
	again, err := as2.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("over the socket"), Type: "chat", IdempotencyKey: "ws-1"})
	if err != nil || again != acc {
		t.Fatalf("the send again: %+v, %v; want %+v", again, err, acc)
	}
	_, err = as2.Send(ctxT(t), client.Message{Recipient: "bob", Payload: []byte("x")})
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Code != "invalid_recipient" || e.Message == "" {
		t.Fatalf("bad send over the socket: %v, want 400 invalid_recipient", err)
	}
	if n := rt.sends.Load(); n != 1 {
		t.Fatalf("%d sends went over HTTP, want only the one before connecting", n)
	}
}

// Many sends wait on one connection at once, each answered by its own
// answer.
func TestConnSendsInFlight(t *testing.T) {
	svc := startService(t)
	alice := &client.Client{APIURL: svc.api, WSURL: svc.ws, Token: token(t, "urn:sm:user:alice")}
	bob := &client.Client{APIURL: svc.api, Token: token(t, "urn:sm:user:bob")}
	conn, err := alice.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	go func() {
		for {
			if _, err := conn.Next(ctx); err != nil {
				return
			}
		}
	}()
	const n = 32
	ids := make(chan string, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			acc, err := conn.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte{byte(i)}})
			if err != nil {
				errs <- err
				return
			}
			ids <- acc.ID
		}()
	}
	seen := map[string]bool{}
	for range n {
		select {
		case id := <-ids:
			seen[id] = true
		case err := <-errs:
			t.Fatal(err)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct ids for %d sends", len(seen), n)
	}
	if got := pendingIDs(t, bob); len(got) != n {
		t.Fatalf("bob has %d pending, want %d", len(got), n)
	}
}

// A send whose connection ends before its answer reports ErrUnanswered:
// here the service accepted it, and its answer was lost. Sent again with
// the same key it answers the same id, and the recipient holds one copy.
// With RetryUnanswered the Stream does that itself.
func TestStreamSendUnanswered(t *testing.T) {
	for _, retry := range []bool{false, true} {
		name := "reported"
		if retry {
			name = "retried"
		}
		t.Run(name, func(t *testing.T) {
			svc := startService(t)
			px := startProxy(t, strings.TrimPrefix(svc.ws, "ws://"))
			alice := &client.Client{APIURL: svc.api, WSURL: "ws://" + px.ln.Addr().String(), Token: token(t, "urn:sm:user:alice")}
			bob := &client.Client{APIURL: svc.api, Token: token(t, "urn:sm:user:bob")}
			connected := make(chan struct{}, 4)
			s := alice.Stream(client.StreamOptions{RetryUnanswered: retry, MinBackoff: time.Hour, MaxBackoff: time.Hour,
				OnState: func(up bool, _ error) {
					if up {
						connected <- struct{}{}
					}
				}})
			defer s.Close()
			ctx, cancel := context.WithCancel(ctxT(t))
			defer cancel()
			go receive(ctx, s, make(chan client.Envelope, 16))
			<-connected

			px.mute.Store(true) // the answer will not reach alice
			m := client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("lost answer")}
			if !retry {
				m.IdempotencyKey = "lost-1"
			}
			type result struct {
				acc client.Accepted
				err error
			}
			done := make(chan result, 1)
			go func() {
				acc, err := s.Send(ctx, m)
				done <- result{acc, err}
			}()
			deadline := time.Now().Add(10 * time.Second)
			var stored []string
			for len(stored) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the send was never accepted")
				}
				stored = pendingIDs(t, bob)
			}
			px.mute.Store(false) // what comes after the cut (a new connection) gets through
			px.cut()
			r := <-done
			if !retry {
				if !errors.Is(r.err, client.ErrUnanswered) {
					t.Fatalf("send cut off before its answer: %+v, %v; want ErrUnanswered", r.acc, r.err)
				}
				r.acc, r.err = alice.Send(ctxT(t), m) // again, with its key, over HTTP
			}
			if r.err != nil || r.acc.ID != stored[0] {
				t.Fatalf("the send again: %+v, %v; want the accepted id %s", r.acc, r.err, stored[0])
			}
			if got := pendingIDs(t, bob); len(got) != 1 {
				t.Fatalf("bob has %v, want one copy", got)
			}
		})
	}
}
