package realtime

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/presence/memory"
)

// benchServer starts a realtime server on st for a benchmark and returns
// it with the URL of its WebSocket endpoint.
func benchServer(b *testing.B, o Options, st Store) (*Server, string) {
	b.Helper()
	o.Instance = "self"
	o.MaxFrameBytes, o.PingInterval, o.PongTimeout, o.WriteTimeout = 1<<16, time.Hour, time.Minute, 10*time.Second
	// Connections closed by one iteration may still be ending when the
	// next connects.
	o.BacklogPage, o.MaxConnsPerUser, o.Heartbeat = 100, 1<<10, time.Hour
	o.SendBufferBytes, o.MaxPayloadBytes = 1<<20, 64<<10 // the defaults
	pr := memory.New(time.Minute)
	b.Cleanup(func() { pr.Close() })
	s := New(o, st, pr, testAuth)
	rt := mux{http.NewServeMux()}
	s.Mount(rt)
	hs := httptest.NewServer(rt.m)
	b.Cleanup(hs.Close)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s, "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/connect"
}

// benchDial opens a client connection as user and returns it with its
// reader.
func benchDial(b *testing.B, url, user string) (io.ReadWriteCloser, *bufio.Reader) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + user}})}
	conn, br, _, err := d.Dial(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, 64<<10)
	}
	return conn, br
}

// skipFrames reads and discards n server frames.
func skipFrames(br *bufio.Reader, n int) error {
	for range n {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return err
		}
		if _, err := br.Discard(int(h.Length)); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkLiveFrames queues live message frames (256-byte payloads) on
// one session, at most 256 ahead of a client that reads them over
// loopback TCP: the cost of writing a frame, batching included.
func BenchmarkLiveFrames(b *testing.B) {
	s, url := benchServer(b, Options{Config: Config{SendQueue: 1 << 20}}, emptyStore{})
	conn, br := benchDial(b, url, "urn:sm:user:bench")
	defer conn.Close()
	all := s.hub.all() // registered before the upgrade's answer
	if len(all) != 1 {
		b.Fatalf("%d sessions, want 1", len(all))
	}
	ss := all[0]
	now := envelope.Now()
	data, err := encodeMessage(&envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:alice",
		Recipient: "urn:sm:user:bench", Type: "chat", Payload: make([]byte, 256), CreatedAt: now})
	if err != nil {
		b.Fatal(err)
	}
	const ahead = 256
	credits := make(chan struct{}, ahead)
	for range ahead {
		credits <- struct{}{}
	}
	done := make(chan error, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	go func() {
		for range b.N {
			if err := skipFrames(br, 1); err != nil {
				done <- err
				return
			}
			credits <- struct{}{}
		}
		done <- nil
	}()
	for i := range b.N {
		<-credits
		ss.enqueue(frame{id: fmt.Sprint(i), data: data, accepted: now})
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBacklog connects a client with 1,000 stored messages (256-byte
// payloads) and reads them all: the backlog's reads and writes.
func BenchmarkBacklog(b *testing.B) {
	const n = 1000
	st := newMemStore()
	ids := envelope.NewIDs()
	for range n {
		now := envelope.Now()
		st.put(&envelope.Envelope{ID: ids.New(now), Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bench",
			Type: "chat", Payload: make([]byte, 256), CreatedAt: now})
	}
	_, url := benchServer(b, Options{Config: Config{SendQueue: 1024}}, st)
	b.ReportAllocs()
	for b.Loop() {
		conn, br := benchDial(b, url, "urn:sm:user:bench")
		if err := skipFrames(br, n); err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}
