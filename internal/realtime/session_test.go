package realtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// sessionOf returns the session of user (the test's only one).
func sessionOf(t *testing.T, s *Server, user string) *session {
	t.Helper()
	var found *session
	waitFor(t, "the session of "+user, func() bool {
		for _, ss := range s.hub.all() {
			if ss.user == user {
				found = ss
			}
		}
		return found != nil
	})
	return found
}

// queuedBytes is what ss counts against its budget.
func queuedBytes(ss *session) int64 {
	ss.out.mu.Lock()
	defer ss.out.mu.Unlock()
	return ss.out.bytes
}

// liveHeap is the heap in use after a collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// pipeSession runs a session of user on one end of an in-memory pipe, the
// connection that the poller cannot watch (as every connection on a
// system without epoll): a goroutine reads it. It returns the client's end.
func pipeSession(t *testing.T, s *Server, user string) (net.Conn, *session) {
	t.Helper()
	ss := s.newSession(context.Background(), user, "192.0.2.1", time.Time{})
	if !s.admit(httptest.NewRecorder(), ss, ss.ip) {
		t.Fatal("session not admitted")
	}
	server, client := net.Pipe()
	t.Cleanup(func() { client.Close() })
	go ss.opened(server)
	return client, ss
}

// frameID is the id of the message a message event carries ("" if none),
// read from the event's head (the id is the envelope's first field)
// without decoding the payload after it.
func frameID(event []byte) string {
	const head = `{"type":"message","message":{"id":`
	if !bytes.HasPrefix(event, []byte(head)) {
		return ""
	}
	var id string
	dec := json.NewDecoder(bytes.NewReader(event[len(head):]))
	if dec.Decode(&id) != nil {
		return ""
	}
	return id
}

// A client that reads about 8 KB/s while 1,000 messages of 60 KB are
// delivered to it holds no more than its send buffer: the session is
// closed with 1013 soon after it falls that far behind, and every
// message, never acknowledged, is still stored and comes as the backlog
// of the next connection, whose pages fit in the same budget.
func TestSlowReaderIsClosedWithinItsBudget(t *testing.T) {
	const (
		budget = 1 << 20
		n      = 1000
		user   = "urn:sm:user:slowreader"
	)
	st := newMemStore()
	s, m, url := newServerWith(t, Options{MaxPayloadBytes: 64 << 10,
		Config: Config{SendBufferBytes: budget, SendQueue: 1024, WriteTimeout: 500 * time.Millisecond}}, st)
	conn, br := rawDial(t, url, user)
	ss := sessionOf(t, s, user)
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	// The client reads 1 KiB every 125 ms.
	go func() {
		buf := make([]byte, 1024)
		tick := time.NewTicker(125 * time.Millisecond)
		defer tick.Stop()
		for range tick.C {
			if _, err := io.ReadFull(br, buf); err != nil {
				return
			}
		}
	}()
	base := liveHeap()
	payload := make([]byte, 60<<10)
	ids := envelope.NewIDs()
	var want []string
	var maxQueued, maxHeap int64
	start := time.Now()
	for i := range n {
		env := &envelope.Envelope{ID: ids.New(time.Now()), Sender: "urn:sm:user:a", Recipient: user,
			Payload: payload, CreatedAt: envelope.Now()}
		st.put(env) // stored, then routed: as the pipeline does
		want = append(want, env.ID)
		s.Deliver(context.Background(), env)
		maxQueued = max(maxQueued, queuedBytes(ss))
		if i%250 == 249 {
			maxHeap = max(maxHeap, liveHeap()-base)
		}
	}
	if maxQueued > budget {
		t.Errorf("the session held %d bytes to write, over its budget of %d", maxQueued, budget)
	}
	if maxHeap > budget+16<<20 {
		t.Errorf("heap grew by %d MB while delivering to a slow reader (budget %d MB)", maxHeap>>20, budget>>20)
	}
	waitFor(t, "the slow reader closed", func() bool { return testutil.ToFloat64(m.WSConnections) == 0 })
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the slow reader was closed after %v", took)
	}
	if got := testutil.ToFloat64(m.WSDropped.WithLabelValues("slow_consumer")); got != 1 {
		t.Errorf("slow_consumer closes: %v, want 1", got)
	}
	t.Logf("held at most %d bytes to write, heap grew by at most %.1f MB, closed after %v",
		maxQueued, float64(maxHeap)/(1<<20), time.Since(start).Round(time.Millisecond))
	conn.Close()

	// Nothing is lost: every message is pending, and the next connection
	// receives them all, oldest first.
	if got := st.pending(user); len(got) != n {
		t.Fatalf("%d messages pending after the close, want %d", len(got), n)
	}
	conn2, br2 := rawDial(t, url, user)
	for i, id := range want {
		_ = conn2.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := ws.ReadFrame(br2)
		if err != nil {
			t.Fatalf("backlog message %d: %v", i, err)
		}
		if got := frameID(f.Payload); got != id {
			t.Fatalf("backlog message %d: id %q, want %s", i, got, id)
		}
	}
	if got := st.largestPage(); got < 1 || got > budget {
		t.Errorf("backlog pages of up to %d frame bytes, want at most %d (the budget)", got, budget)
	}
}

// A client past its send buffer gets what was already being written, then
// a close frame 1013 whose reason names the key.
func TestSlowConsumerClosesWithTryAgainLater(t *testing.T) {
	const user = "urn:sm:user:behind"
	s, m, url := newServerWith(t, Options{Config: Config{SendBufferBytes: 256 << 10, SendQueue: 1024}}, newMemStore())
	conn, br := rawDial(t, url, user)
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	payload := make([]byte, 60<<10)
	for i := 0; i < 1000 && testutil.ToFloat64(m.WSDropped.WithLabelValues("slow_consumer")) == 0; i++ {
		s.Deliver(context.Background(), &envelope.Envelope{ID: fmt.Sprintf("m%d", i), Sender: "urn:sm:user:a", Recipient: user,
			Payload: payload, CreatedAt: envelope.Now()})
	}
	for {
		f := readServerFrame(t, conn, br)
		if f.Header.OpCode == ws.OpText {
			continue
		}
		if f.Header.OpCode != ws.OpClose {
			t.Fatalf("got %v, want messages then a close frame", f.Header.OpCode)
		}
		code, reason := ws.ParseCloseFrameData(f.Payload)
		if code != 1013 || !strings.Contains(reason, "realtime.send_buffer_bytes") {
			t.Fatalf("close %d %q, want 1013 naming realtime.send_buffer_bytes", code, reason)
		}
		return
	}
}

// A client that never answers pings but sends pongs of its own is
// disconnected a ping interval plus the pong timeout after it connected:
// only a pong echoing the ping answers it.
func TestUnsolicitedPongsDoNotAnswerPings(t *testing.T) {
	const interval, timeout = 100 * time.Millisecond, 300 * time.Millisecond
	_, m, url := newServer(t, Options{Config: Config{PingInterval: interval, PongTimeout: timeout}})
	began := time.Now()
	conn, _ := rawDial(t, url, "urn:sm:user:pongs")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			// Empty pongs and pongs with a payload of their own.
			p := []byte(nil)
			if i%2 == 1 {
				p = []byte(fmt.Sprintf("%08d", i))
			}
			if ws.WriteFrame(conn, ws.MaskFrame(ws.NewPongFrame(p))) != nil {
				return
			}
		}
	}()
	waitFor(t, "pong timeout", func() bool {
		return testutil.ToFloat64(m.WSDropped.WithLabelValues("pong_timeout")) == 1 && testutil.ToFloat64(m.WSConnections) == 0
	})
	if took := time.Since(began); took < interval+timeout {
		t.Fatalf("disconnected after %v, before the ping interval plus the pong timeout", took)
	}
}

// handshakeDial sends the upgrade request for user and, in the same
// write, extra (bytes of a first frame); it returns the connection once
// the server has answered 101.
func handshakeDial(t *testing.T, url, user string, extra []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	host := strings.TrimPrefix(url, "ws://")
	host = host[:strings.Index(host, "/")]
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	req := "GET /v1/connect HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer " + user + "\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), extra...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn, br
}

// A frame trickled one byte per 100 ms is not read whole: the connection
// is closed once the frame has taken the I/O timeout (write_timeout), on
// every way a connection is read: bytes sent with the handshake (read by
// a goroutine before the poller takes over), the poller, and a goroutine
// for a connection the poller cannot watch (every connection without
// epoll).
func TestTrickledFrameIsClosed(t *testing.T) {
	const timeout = 500 * time.Millisecond
	frame, err := ws.CompileFrame(ws.MaskFrame(ws.NewTextFrame(ackFrame("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"))))
	if err != nil {
		t.Fatal(err)
	}
	const head = 2 // bytes sent at once; the rest is trickled
	cases := []struct {
		name string
		open func(t *testing.T, s *Server, url, user string) (io.Writer, io.Reader)
		// polled: whether the poller watches the connection while the
		// frame trickles in
		polled bool
	}{
		{"bytes sent with the handshake", func(t *testing.T, s *Server, url, user string) (io.Writer, io.Reader) {
			conn, br := handshakeDial(t, url, user, frame[:head])
			return conn, br
		}, false},
		{"poller", func(t *testing.T, s *Server, url, user string) (io.Writer, io.Reader) {
			if s.poller() == nil {
				t.Skip("no poller on this system")
			}
			conn, br := rawDial(t, url, user)
			if _, err := conn.Write(frame[:head]); err != nil {
				t.Fatal(err)
			}
			return conn, br
		}, true},
		{"goroutine reader", func(t *testing.T, s *Server, url, user string) (io.Writer, io.Reader) {
			conn, _ := pipeSession(t, s, user)
			if _, err := conn.Write(frame[:head]); err != nil {
				t.Fatal(err)
			}
			return conn, conn
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, m, url := newServer(t, Options{Config: Config{WriteTimeout: timeout}})
			const user = "urn:sm:user:trickle"
			began := time.Now()
			w, r := tc.open(t, s, url, user)
			ss := sessionOf(t, s, user)
			closed := make(chan time.Time, 1)
			go func() {
				_, _ = io.Copy(io.Discard, r) // the server writes nothing; it closes
				closed <- time.Now()
			}()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			var at time.Time
		trickle:
			for i := head; ; i++ {
				select {
				case at = <-closed:
					break trickle
				case <-tick.C:
				}
				if i == len(frame) {
					t.Fatalf("the whole frame (%d bytes over %v) was taken", len(frame), time.Since(began))
				}
				if i == head+2 {
					ss.mu.Lock()
					polled := ss.watch != nil
					ss.mu.Unlock()
					if polled != tc.polled {
						t.Fatalf("watched by the poller: %v, want %v", polled, tc.polled)
					}
				}
				_, _ = w.Write(frame[i : i+1])
			}
			if took := at.Sub(began); took < timeout || took > timeout+5*time.Second {
				t.Fatalf("closed %v after the frame began, want the I/O timeout (%v)", took, timeout)
			}
			waitFor(t, "the session ended", func() bool { return len(s.hub.all()) == 0 })
			if got := testutil.ToFloat64(m.WSAcks); got != 0 {
				t.Fatalf("%v acks read", got)
			}
		})
	}
}

// Bytes sent with the handshake are read, and the connection is then
// watched by the poller like any other (no goroutine of its own).
func TestHandshakeBytesThenPoller(t *testing.T) {
	st := &ackStore{}
	s, _, url := newServerWith(t, Options{}, st)
	if s.poller() == nil {
		t.Skip("no poller on this system")
	}
	const user = "urn:sm:user:eager"
	ack := ws.MustCompileFrame(ws.MaskFrame(ws.NewTextFrame(ackFrame("first"))))
	conn, _ := handshakeDial(t, url, user, ack)
	waitFor(t, "the ack sent with the handshake", func() bool { return len(st.acked()) == 1 })
	ss := sessionOf(t, s, user)
	waitFor(t, "the poller's watch", func() bool {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return ss.watch != nil
	})
	if _, err := conn.Write(ws.MustCompileFrame(ws.MaskFrame(ws.NewTextFrame(ackFrame("second"))))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second ack", func() bool { return len(st.acked()) == 2 })
}

// Pings fall due on sessions whose writer is stuck on a client that does
// not read: each ping waits in its session's queue, with no goroutine of
// its own (the sessions' readers and writers are all there is).
func TestPingTimersHoldNoGoroutine(t *testing.T) {
	const n = 200
	s, _, _ := newServer(t, Options{Config: Config{PingInterval: 50 * time.Millisecond, PongTimeout: time.Minute, WriteTimeout: time.Minute}})
	before := runtime.NumGoroutine()
	sessions := make([]*session, n)
	for i := range sessions {
		user := fmt.Sprintf("urn:sm:user:stuck%d", i)
		_, sessions[i] = pipeSession(t, s, user)
		// The client never reads: the writer waits on this frame.
		s.Deliver(context.Background(), &envelope.Envelope{ID: fmt.Sprintf("m%d", i), Sender: "urn:sm:user:a", Recipient: user,
			Payload: []byte("hi"), CreatedAt: envelope.Now()})
	}
	waitFor(t, "every session's ping due", func() bool {
		for _, ss := range sessions {
			ss.mu.Lock()
			ss.out.mu.Lock()
			due := ss.ping == pingQueued && ss.out.writer
			ss.out.mu.Unlock()
			ss.mu.Unlock()
			if !due {
				return false
			}
		}
		return true
	})
	// A reader and a writer per session.
	if grew := runtime.NumGoroutine() - before; grew > 2*n+n/10 {
		t.Fatalf("%d goroutines more for %d sessions with a ping due, want about %d", grew, n, 2*n)
	}
}

// A session's state only moves forward, and a move to where it is already
// is refused (the first close, or end, wins).
func TestSessionStateMovesForwardOnly(t *testing.T) {
	states := []sessionState{stateOpening, stateOpen, stateClosing, stateClosed}
	for _, from := range states {
		for _, to := range states {
			ss := &session{state: from}
			moved := ss.moveLocked(to)
			if want := to > from; moved != want || (moved && ss.state != to) || (!moved && ss.state != from) {
				t.Errorf("%v to %v: moved %v, now %v; want moved %v", from, to, moved, ss.state, want)
			}
		}
	}
}
