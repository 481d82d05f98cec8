package api

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
)

// benchmarkSendStored runs sends of 256-byte payloads through the handler
// into a real SQLite store (the embedded default), from 64 goroutines per
// GOMAXPROCS at once, each with an idempotency key of its own when keyed,
// reporting msgs/s besides ns/op.
func benchmarkSendStored(b *testing.B, keyed bool) {
	st, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "store.db"), sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 17}}, route.Options{MaxPayloadBytes: 1 << 16}, st, &publisher{})
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	payload := strings.Repeat("A", 344)
	var seq atomic.Int64
	b.SetParallelism(64)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.Add(1)
			body := `{"recipient":"urn:sm:user:r` + strconv.FormatInt(n%1000, 10) + `","payload":"` + payload + `"`
			if keyed {
				body += `,"idempotency_key":"k` + strconv.FormatInt(n, 10) + `"`
			}
			req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(body+"}"))
			req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
			req.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			rt.ServeHTTP(w, req)
			if w.Code != http.StatusAccepted {
				b.Errorf("%d %s", w.Code, w.Body)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkSendStored is sends without a key into SQLite.
func BenchmarkSendStored(b *testing.B) { benchmarkSendStored(b, false) }

// BenchmarkSendKeyed is sends with an idempotency key each into SQLite:
// the key's reservation, the message's store write and the record's
// publication.
func BenchmarkSendKeyed(b *testing.B) { benchmarkSendStored(b, true) }

// BenchmarkSendBatchStored is one POST /v1/messages/batch of 100 messages
// of 256-byte payloads, each to another recipient (a group message fanned
// out to its members' devices), at a time, into a real SQLite store: the
// time of a batch's answer, reporting msgs/s besides ns/op.
func BenchmarkSendBatchStored(b *testing.B) {
	st, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "store.db"), sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	s := newServer(Options{Config: Config{MaxBodyBytes: 1 << 17, MaxBatch: 1000, MaxBatchBodyBytes: 16 << 20}}, route.Options{MaxPayloadBytes: 1 << 16}, st, &publisher{})
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	payload := strings.Repeat("A", 344)
	var body strings.Builder
	body.WriteString(`{"messages":[`)
	for i := range 100 {
		if i > 0 {
			body.WriteByte(',')
		}
		body.WriteString(`{"recipient":"urn:sm:user:r` + strconv.Itoa(i) + `","payload":"` + payload + `"}`)
	}
	body.WriteString(`]}`)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages/batch", strings.NewReader(body.String()))
		req.Header.Set("Authorization", "Bearer urn:sm:user:alice")
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	b.ReportMetric(float64(b.N*100)/time.Since(start).Seconds(), "msgs/s")
}
