package realtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// ackStore records the acks it is given.
type ackStore struct {
	emptyStore
	mu   sync.Mutex
	acks [][]string
}

func (a *ackStore) Ack(_ context.Context, _ string, ids []string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.acks = append(a.acks, ids)
	return len(ids), nil
}

func (a *ackStore) PendingWithin(context.Context, string, string, int, int) (store.Page, error) {
	return store.Page{}, nil
}

func (a *ackStore) acked() [][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([][]string(nil), a.acks...)
}

// rawDial opens a WebSocket with gobwas/ws, so that a test can write any
// frame it likes.
func rawDial(t *testing.T, url, user string) (net.Conn, *bufio.Reader) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + user}})}
	conn, br, _, err := d.Dial(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if br == nil {
		br = bufio.NewReader(conn)
	}
	return conn, br
}

func writeClientFrame(t *testing.T, w io.Writer, op ws.OpCode, fin bool, p []byte) {
	t.Helper()
	if err := ws.WriteFrame(w, ws.MaskFrame(ws.NewFrame(op, fin, p))); err != nil {
		t.Fatal(err)
	}
}

// readServerFrame reads the next frame the server sends.
func readServerFrame(t *testing.T, conn net.Conn, br *bufio.Reader) ws.Frame {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ws.ReadFrame(br)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func ackFrame(ids ...string) []byte {
	return []byte(`{"type":"ack","ids":["` + strings.Join(ids, `","`) + `"]}`)
}

// A message in fragments, with a ping between them and one fragment split
// across TCP writes, is read whole; the ping is answered.
func TestFragmentedMessageWithPingBetween(t *testing.T) {
	st := &ackStore{}
	_, m, url := newServerWith(t, Options{}, st)
	conn, br := rawDial(t, url, "urn:sm:user:frag")
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	id := envelope.NewIDs().New(time.Now())
	msg := ackFrame(id)
	writeClientFrame(t, conn, ws.OpText, false, msg[:10])
	writeClientFrame(t, conn, ws.OpPing, true, []byte("are you there"))
	// The last fragment arrives in two pieces.
	last, err := ws.CompileFrame(ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, msg[10:])))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(last[:5]); err != nil {
		t.Fatal(err)
	}
	if f := readServerFrame(t, conn, br); f.Header.OpCode != ws.OpPong || string(f.Payload) != "are you there" {
		t.Fatalf("answer to the ping: %v %q", f.Header.OpCode, f.Payload)
	}
	if _, err := conn.Write(last[5:]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ack", func() bool { return len(st.acked()) == 1 })
	if got := st.acked()[0]; len(got) != 1 || got[0] != id {
		t.Fatalf("acked %v, want [%s]", got, id)
	}
}

// Frames that break the protocol close the connection with 1002; a close
// from the client is answered with its code.
func TestProtocolErrorsAndClientClose(t *testing.T) {
	_, m, url := newServer(t, Options{})
	cases := []struct {
		name  string
		frame []byte
		want  ws.StatusCode
	}{
		{"unmasked frame", ws.MustCompileFrame(ws.NewTextFrame([]byte(`{}`))), ws.StatusProtocolError},
		{"continuation without a start", ws.MustCompileFrame(ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, []byte("x")))), ws.StatusProtocolError},
		{"fragmented ping", ws.MustCompileFrame(ws.MaskFrame(ws.NewFrame(ws.OpPing, false, nil))), ws.StatusProtocolError},
		{"invalid UTF-8 text", ws.MustCompileFrame(ws.MaskFrame(ws.NewTextFrame([]byte{0xff, 0xfe}))), ws.StatusInvalidFramePayloadData},
		{"client close", ws.MustCompileFrame(ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye")))), ws.StatusGoingAway},
		// A close body is empty or starts with a two-byte code (RFC 6455 5.5.1).
		{"close with a 1-byte body", ws.MustCompileFrame(ws.MaskFrame(ws.NewCloseFrame([]byte{3}))), ws.StatusProtocolError},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, br := rawDial(t, url, fmt.Sprintf("urn:sm:user:p%d", i))
			if _, err := conn.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			f := readServerFrame(t, conn, br)
			if f.Header.OpCode != ws.OpClose {
				t.Fatalf("got %v, want a close frame", f.Header.OpCode)
			}
			if code, reason := ws.ParseCloseFrameData(f.Payload); code != tc.want {
				t.Fatalf("close %d %q, want %d", code, reason, tc.want)
			}
			// As a client does, answer the close; the server ends the
			// connection.
			_ = ws.WriteFrame(conn, ws.MaskFrame(ws.NewCloseFrame(f.Payload)))
			// (After a protocol error the server does not wait for the
			// answer: its end may be reset rather than closed.)
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, br); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection not closed by the server: %v", err)
			}
		})
	}
	waitFor(t, "every session ended", func() bool { return testutil.ToFloat64(m.WSConnections) == 0 })
}

// Idle connections hold no goroutine (the poller watches them), and
// deliveries to many of them at once all arrive.
func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	const n = 200
	s, m, url := newServer(t, Options{})
	before := runtime.NumGoroutine()
	type client struct {
		conn net.Conn
		br   *bufio.Reader
	}
	clients := make([]client, n)
	for i := range clients {
		conn, br := rawDial(t, url, fmt.Sprintf("urn:sm:user:idle%d", i))
		clients[i] = client{conn, br}
	}
	waitFor(t, "registrations", func() bool { return testutil.ToFloat64(m.WSConnections) == n })
	// Each client connection costs the test's own side nothing either:
	// nobody reads yet. Allow for a few goroutines that come and go.
	// The poller's idle readers wait for whichever connection has data
	// next; they are not the connections'.
	waitFor(t, "the writers to return", func() bool {
		return runtime.NumGoroutine()-s.poller().idleReaders()-before < n/10
	})

	var wg sync.WaitGroup
	for i := range clients {
		c := clients[i]
		user := fmt.Sprintf("urn:sm:user:idle%d", i)
		id := envelope.NewIDs().New(time.Now())
		wg.Go(func() {
			s.Deliver(context.Background(), &envelope.Envelope{ID: id, Sender: "urn:sm:user:a", Recipient: user,
				Payload: []byte("hi"), CreatedAt: envelope.Now()})
		})
		wg.Go(func() {
			_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			f, err := ws.ReadFrame(c.br)
			if err != nil || !strings.Contains(string(f.Payload), id) {
				t.Errorf("%s got %q, %v", user, f.Payload, err)
			}
		})
	}
	wg.Wait()
}

// A session stopped while its upgrade is under way (Shutdown sees every
// admitted session) is closed once the connection opens: the client gets
// the stop's close frame, and its answer ends the session.
func TestStopDuringUpgrade(t *testing.T) {
	s, _, _ := newServer(t, Options{})
	ss := s.newSession(context.Background(), "urn:sm:user:early", "192.0.2.1", time.Time{})
	if !s.admit(httptest.NewRecorder(), ss, ss.ip) {
		t.Fatal("session not admitted")
	}
	ss.stop(ws.StatusGoingAway, "server shutting down")
	server, client := net.Pipe()
	defer client.Close()
	ss.opened(server)
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	f, err := ws.ReadFrame(client)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if f.Header.OpCode != ws.OpClose {
		t.Fatalf("first frame %v, want a close frame", f.Header.OpCode)
	}
	if code, reason := ws.ParseCloseFrameData(f.Payload); code != ws.StatusGoingAway || reason != "server shutting down" {
		t.Fatalf("close %d %q, want 1001 server shutting down", code, reason)
	}
	if err := ws.WriteFrame(client, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "")))); err != nil {
		t.Fatalf("answer the close: %v", err)
	}
	ended := make(chan struct{})
	go func() { s.sessions.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(closeWait - time.Second): // the answer, not the close wait, ends it
		t.Fatal("the session did not end after the client answered its close")
	}
}
