package storetest

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// BacklogSize is the number of envelopes RunBacklogBenchmark drains.
const BacklogSize = 10000

// RunBacklogBenchmark measures how fast a recipient who comes back online
// drains a backlog of BacklogSize envelopes (256-byte payloads): Pending in
// pages of 500, each page acknowledged before the next is fetched. It
// reports the drain time per backlog ("ms/backlog") besides ns/op.
func RunBacklogBenchmark(b *testing.B, s store.Store) {
	payload := make([]byte, 256)
	at := time.Now().UTC().Truncate(time.Millisecond)
	var total time.Duration
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		recipient := fmt.Sprintf("urn:sm:user:backlog%d", i)
		envs := make([]*envelope.Envelope, 0, 500)
		for n := 0; n < BacklogSize; n += len(envs) {
			envs = envs[:0]
			for range min(500, BacklogSize-n) {
				envs = append(envs, &envelope.Envelope{ID: ids.New(at), Sender: alice, Recipient: recipient, Payload: payload, CreatedAt: at})
			}
			if _, err := s.PutMessages(b.Context(), envs); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		start := time.Now()
		drained := 0
		cursor := ""
		for {
			p, err := s.Pending(b.Context(), recipient, cursor, 500)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Ack(b.Context(), recipient, idsOf(p.Envelopes)); err != nil {
				b.Fatal(err)
			}
			drained += len(p.Envelopes)
			if p.Next == "" {
				break
			}
			cursor = p.Next
		}
		total += time.Since(start)
		if drained != BacklogSize {
			b.Fatalf("drained %d envelopes, want %d", drained, BacklogSize)
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/backlog")
}

// RunPutBenchmark measures committed stores of one envelope (256-byte
// payload) per PutMessages call from 64 goroutines per GOMAXPROCS at once
// (the shape of the send path), reporting "msgs/s" besides ns/op.
func RunPutBenchmark(b *testing.B, s store.Store) {
	payload := make([]byte, 256)
	ids := envelope.NewIDs()
	var seq atomic.Int64
	at := time.Now().UTC().Truncate(time.Millisecond)
	b.SetParallelism(64)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.Add(1)
			e := &envelope.Envelope{
				ID:        ids.New(at),
				Sender:    "urn:sm:user:sender",
				Recipient: fmt.Sprintf("urn:sm:user:r%d", n%1000),
				Payload:   payload,
				CreatedAt: at,
			}
			if _, err := s.PutMessages(b.Context(), []*envelope.Envelope{e}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
