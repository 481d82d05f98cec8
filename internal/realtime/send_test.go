package realtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/web"
)

// fakeAccepter records the messages it is asked to accept and answers as
// the routing core would for a few recipients: "urn:sm:user:full" is
// recipient_queue_full, a recipient that is not a URN invalid_recipient.
// A message whose idempotency key has a gate waits for the gate to be
// released (or closed).
type fakeAccepter struct {
	mu    sync.Mutex
	calls []route.Message
	gates map[string]chan struct{}
	at    time.Time
}

func newFakeAccepter() *fakeAccepter {
	return &fakeAccepter{gates: map[string]chan struct{}{}, at: time.Date(2026, 11, 27, 10, 0, 0, 123e6, time.UTC)}
}

// gate makes the accepts of key wait until release(key).
func (a *fakeAccepter) gate(keys ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range keys {
		a.gates[k] = make(chan struct{})
	}
}

func (a *fakeAccepter) release(key string) {
	a.mu.Lock()
	g := a.gates[key]
	a.mu.Unlock()
	close(g)
}

func (a *fakeAccepter) accepted() []route.Message {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]route.Message(nil), a.calls...)
}

func (a *fakeAccepter) Accept(ctx context.Context, m route.Message) (route.Accepted, error) {
	a.mu.Lock()
	a.calls = append(a.calls, m)
	g := a.gates[m.IdempotencyKey]
	a.mu.Unlock()
	if g != nil {
		<-g
	}
	switch {
	case m.Recipient == "urn:sm:user:full":
		return route.Accepted{}, &route.Error{Kind: route.KindQueueFull, Field: route.FieldRecipient, Message: "the recipient's queue is full"}
	case envelope.ValidateURN(m.Recipient) != nil:
		return route.Accepted{}, &route.Error{Kind: route.KindInvalid, Field: route.FieldRecipient, Message: "recipient: not a URN"}
	case m.Recipient == "urn:sm:user:down":
		return route.Accepted{}, &route.Error{Kind: route.KindUnavailable, Backend: "store", RetryAfter: time.Second, Message: "the store is unavailable"}
	}
	return route.Accepted{ID: "id-" + m.IdempotencyKey, CreatedAt: a.at}, nil
}

// event is a server frame as a client reads it.
type event struct {
	Type  string `json:"type"`
	Ref   string `json:"ref"`
	ID    string `json:"id"`
	At    string `json:"created_at"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	RetryAfter int `json:"retry_after"`
	raw        string
}

// wsClient is the client's end of a raw connection.
type wsClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

// write sends data as one masked text frame.
func (c *wsClient) write(data string) {
	c.t.Helper()
	frame, err := ws.CompileFrame(ws.MaskFrame(ws.NewTextFrame([]byte(data))))
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(frame); err != nil {
		c.t.Fatal(err)
	}
}

// next reads the next text event (control frames are skipped).
func (c *wsClient) next() (event, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := ws.ReadFrame(c.br)
		if err != nil {
			return event{}, err
		}
		switch f.Header.OpCode {
		case ws.OpText:
			var e event
			if err := json.Unmarshal(f.Payload, &e); err != nil {
				return event{}, err
			}
			e.raw = string(f.Payload)
			return e, nil
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(f.Payload)
			return event{}, closed{code, reason}
		}
	}
}

// must reads the next event, failing the test on error.
func (c *wsClient) must() event {
	c.t.Helper()
	e, err := c.next()
	if err != nil {
		c.t.Fatal(err)
	}
	return e
}

type closed struct {
	code   ws.StatusCode
	reason string
}

func (c closed) Error() string { return "closed " + strconv.Itoa(int(c.code)) + " " + c.reason }

// sendFrame is a send frame of ref with message body m (JSON).
func sendFrame(ref, m string) string {
	return `{"type":"send","ref":"` + ref + `","message":` + m + `}`
}

// msgTo is a message to who with key.
func msgTo(who, key string) string {
	return `{"recipient":"urn:sm:user:` + who + `","payload":"aGk=","type":"chat","idempotency_key":"` + key + `","sender":"urn:sm:user:mallory"}`
}

// connectWays are the ways a session's connection is read: the poller,
// and a goroutine for a connection it cannot watch.
var connectWays = []struct {
	name string
	open func(t *testing.T, s *Server, url, user string) *wsClient
}{
	{"poller", func(t *testing.T, s *Server, url, user string) *wsClient {
		if s.poller() == nil {
			t.Skip("no poller on this system")
		}
		conn, br := rawDial(t, url, user)
		return &wsClient{t: t, conn: conn, br: br}
	}},
	{"goroutine reader", func(t *testing.T, s *Server, url, user string) *wsClient {
		conn, _ := pipeSession(t, s, user)
		return &wsClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	}},
}

// A send frame is accepted for the session's user, whatever the message
// says its sender is, and answered with sent (its id and time as POST
// /v1/messages answers them) or send_error (the HTTP answer's code and
// message, and retry_after where it has Retry-After), matched by ref.
func TestSendIsAnsweredByRef(t *testing.T) {
	for _, way := range connectWays {
		t.Run(way.name, func(t *testing.T) {
			s, _, url := newServer(t, Options{})
			acc := newFakeAccepter()
			s.AcceptSends(acc, nil)
			c := way.open(t, s, url, "urn:sm:user:alice")
			c.write(sendFrame("r1", msgTo("bob", "k1")))
			if e := c.must(); e.Type != "sent" || e.Ref != "r1" || e.ID != "id-k1" || e.At != "2026-11-27T10:00:00.123Z" {
				t.Fatalf("answer %s, want sent r1 id-k1 at 2026-11-27T10:00:00.123Z", e.raw)
			}
			got := acc.accepted()
			want := route.Message{Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob", Payload: "aGk=", Type: "chat", IdempotencyKey: "k1"}
			if len(got) != 1 || got[0] != want {
				t.Fatalf("accepted %+v, want %+v", got, want)
			}
			for _, tc := range []struct {
				frame, code string
				retry       int
			}{
				{sendFrame("r2", msgTo("full", "k2")), web.CodeRecipientQueueFull, 0},
				{sendFrame("r3", `{"recipient":"bob","payload":"aGk="}`), web.CodeInvalidRecipient, 0},
				{sendFrame("r4", msgTo("down", "k4")), web.CodeBackendUnavailable, 1},
			} {
				c.write(tc.frame)
				e := c.must()
				ref := tc.frame[strings.Index(tc.frame, `"ref":"`)+7:]
				ref = ref[:strings.IndexByte(ref, '"')]
				if e.Type != "send_error" || e.Ref != ref || e.Error == nil || e.Error.Code != tc.code || e.Error.Message == "" || e.RetryAfter != tc.retry {
					t.Fatalf("answer %s, want send_error %s %s retry_after %d", e.raw, ref, tc.code, tc.retry)
				}
			}
		})
	}
}

// A malformed send frame is answered with send_error bad_request (with
// its ref when that is valid) and the connection stays open: the next
// send is accepted. Nothing malformed reaches the core.
func TestMalformedSendIsRefusedAndTheConnectionStays(t *testing.T) {
	s, _, url := newServer(t, Options{})
	acc := newFakeAccepter()
	s.AcceptSends(acc, nil)
	conn, br := rawDial(t, url, "urn:sm:user:alice")
	c := &wsClient{t: t, conn: conn, br: br}
	cases := []struct{ frame, ref string }{
		{`{"type":"send","ref":"m1"}`, "m1"},
		{`{"type":"send","ref":"m2","message":"hello"}`, "m2"},
		{`{"type":"send","ref":"m3","message":{"recipient":7,"payload":"aGk="}}`, "m3"},
		{`{"type":"send","message":{"recipient":"urn:sm:user:bob","payload":"aGk="}}`, ""},
		{`{"type":"send","ref":"","message":{"recipient":"urn:sm:user:bob","payload":"aGk="}}`, ""},
		{`{"type":"send","ref":"` + strings.Repeat("r", 65) + `","message":{"recipient":"urn:sm:user:bob","payload":"aGk="}}`, ""},
		{`{"type":"send","ref":12,"message":{"recipient":"urn:sm:user:bob","payload":"aGk="}}`, ""},
	}
	for _, tc := range cases {
		c.write(tc.frame)
		e := c.must()
		if e.Type != "send_error" || e.Ref != tc.ref || e.Error == nil || e.Error.Code != web.CodeBadRequest {
			t.Fatalf("%s: answer %s, want send_error bad_request with ref %q", tc.frame, e.raw, tc.ref)
		}
	}
	c.write(sendFrame("ok", msgTo("bob", "k1")))
	if e := c.must(); e.Type != "sent" || e.Ref != "ok" {
		t.Fatalf("send after the malformed ones: %s, want sent", e.raw)
	}
	if n := len(acc.accepted()); n != 1 {
		t.Fatalf("%d messages reached the core, want the one well-formed send", n)
	}
}

// A send frame over realtime.max_frame_bytes closes the connection with
// 1009, as any frame does, and accepts nothing.
func TestSendOverTheFrameLimitCloses(t *testing.T) {
	s, _, url := newServer(t, Options{Config: Config{MaxFrameBytes: 2048}})
	acc := newFakeAccepter()
	s.AcceptSends(acc, nil)
	conn, br := rawDial(t, url, "urn:sm:user:alice")
	c := &wsClient{t: t, conn: conn, br: br}
	c.write(sendFrame("big", `{"recipient":"urn:sm:user:bob","payload":"`+strings.Repeat("A", 4096)+`"}`))
	_, err := c.next()
	var cl closed
	if !errors.As(err, &cl) || cl.code != ws.StatusMessageTooBig {
		t.Fatalf("read ended with %v, want close 1009", err)
	}
	if n := len(acc.accepted()); n != 0 {
		t.Fatalf("%d accepted, want none", n)
	}
}

// Sends in flight are bounded per connection: with
// realtime.max_sends_in_flight unanswered the server stops reading from
// the connection (on the poller's path it does not watch it) until one is
// answered; then it reads on. Answers come as accepts finish, in any
// order, each matched by its ref, and every send is answered: none is
// dropped.
func TestSendsInFlightPauseReading(t *testing.T) {
	const max, n = 2, 6
	for _, way := range connectWays {
		t.Run(way.name, func(t *testing.T) {
			s, _, url := newServer(t, Options{Config: Config{MaxSendsInFlight: max}})
			acc := newFakeAccepter()
			keys := make([]string, n)
			for i := range keys {
				keys[i] = "k" + strconv.Itoa(i)
			}
			acc.gate(keys...)
			s.AcceptSends(acc, nil)
			user := "urn:sm:user:pipelined-" + strings.ReplaceAll(way.name, " ", "-")
			c := way.open(t, s, url, user)
			ss := sessionOf(t, s, user)
			// All n frames go out at once (a pipe takes them as the
			// server reads them: from another goroutine).
			var frames strings.Builder
			for i := range n {
				frame, err := ws.CompileFrame(ws.MaskFrame(ws.NewTextFrame([]byte(sendFrame("r"+strconv.Itoa(i), msgTo("bob", keys[i]))))))
				if err != nil {
					t.Fatal(err)
				}
				frames.Write(frame)
			}
			wrote := make(chan error, 1)
			go func() { _, err := io.WriteString(c.conn, frames.String()); wrote <- err }()
			paused := func() bool {
				ss.sendMu.Lock()
				defer ss.sendMu.Unlock()
				return ss.inFlight == max && ss.resume != nil
			}
			waitFor(t, "reading paused at the bound", paused)
			if got := len(acc.accepted()); got != max {
				t.Fatalf("%d sends reached the core while reading is paused, want %d", got, max)
			}
			// The second answered first: its answer comes first, and
			// reading resumes (the third send reaches the core).
			acc.release(keys[1])
			if e := c.must(); e.Type != "sent" || e.Ref != "r1" || e.ID != "id-k1" {
				t.Fatalf("first answer %s, want sent r1", e.raw)
			}
			waitFor(t, "the third send read", func() bool { return len(acc.accepted()) == max+1 })
			waitFor(t, "reading paused again", paused)
			refs := map[string]bool{"r1": true}
			for i := 0; i < n; i++ {
				if i == 1 {
					continue
				}
				acc.release(keys[i])
				e := c.must()
				if e.Type != "sent" || e.ID != "id-"+strings.Replace(e.Ref, "r", "k", 1) || refs[e.Ref] {
					t.Fatalf("answer %s: want a sent event matching its ref, once", e.raw)
				}
				refs[e.Ref] = true
			}
			if len(refs) != n {
				t.Fatalf("answered %v, want all %d sends", refs, n)
			}
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			// Reading goes on once below the bound: an ack is applied.
			c.write(sendFrame("last", msgTo("bob", "last")))
			if e := c.must(); e.Type != "sent" || e.Ref != "last" {
				t.Fatalf("send after the rest: %s, want sent", e.raw)
			}
		})
	}
}

// Sends count against the user's rate limit, the one the HTTP API spends
// (a limiter shared with it): past it a send is answered send_error
// rate_limited with retry_after and not accepted. They do not count
// against the frame rate (realtime.ack_rate), which still limits acks.
func TestSendRateLimits(t *testing.T) {
	s, _, url := newServer(t, Options{Config: Config{AckRate: 0.001, AckBurst: 1}})
	acc := newFakeAccepter()
	limiter := web.NewLimiter(0.001, 3)
	s.AcceptSends(acc, limiter)
	// An HTTP request of alice's spent one of her three.
	if ok, _ := limiter.Allow("urn:sm:user:alice", time.Now()); !ok {
		t.Fatal("the limiter refused the first request")
	}
	conn, br := rawDial(t, url, "urn:sm:user:alice")
	c := &wsClient{t: t, conn: conn, br: br}
	for i := range 2 {
		c.write(sendFrame("s"+strconv.Itoa(i), msgTo("bob", "k"+strconv.Itoa(i))))
		if e := c.must(); e.Type != "sent" {
			t.Fatalf("send %d within the limit: %s, want sent", i, e.raw)
		}
	}
	c.write(sendFrame("over", msgTo("bob", "k9")))
	if e := c.must(); e.Type != "send_error" || e.Ref != "over" || e.Error.Code != web.CodeRateLimited || e.RetryAfter < 1 {
		t.Fatalf("send over the limit: %s, want send_error rate_limited with retry_after", e.raw)
	}
	if n := len(acc.accepted()); n != 2 {
		t.Fatalf("%d accepted, want 2", n)
	}
	// The frame rate (one frame) was not spent by the sends: the first
	// ack is applied, the second refused.
	c.write(string(ackFrame("a")))
	c.write(string(ackFrame("b")))
	if e := c.must(); e.Type != "error" || e.Error.Code != web.CodeRateLimited {
		t.Fatalf("second ack: %s, want an error event rate_limited (the first applied)", e.raw)
	}
}

// Shutdown waits for the sends its sessions started: while an accept
// runs it does not return (here: until its context ends); once the
// accept is done it does.
func TestShutdownWaitsForSendsInFlight(t *testing.T) {
	s, m, url := newServer(t, Options{})
	acc := newFakeAccepter()
	acc.gate("slow")
	s.AcceptSends(acc, nil)
	conn, br := rawDial(t, url, "urn:sm:user:alice")
	c := &wsClient{t: t, conn: conn, br: br}
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	c.write(sendFrame("r", msgTo("bob", "slow")))
	waitFor(t, "the send accepted", func() bool { return len(acc.accepted()) == 1 })
	go func() { // the client answers the server's close
		for {
			if _, err := c.next(); err != nil {
				conn.Close()
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a send in flight: %v, want it to wait past its deadline", err)
	}
	acc.release("slow")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := s.Shutdown(ctx2); err != nil {
		t.Fatalf("Shutdown once the send is done: %v", err)
	}
}
