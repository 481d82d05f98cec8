package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// cpuMeter measures the CPU time the process spends (all its goroutines:
// the store's and the benchmark's own) over a timed part of a benchmark.
type cpuMeter struct {
	start time.Duration
	ok    bool
}

func startCPU() cpuMeter {
	at, ok := processCPU()
	return cpuMeter{start: at, ok: ok}
}

// report reports the CPU time spent since startCPU per unit (n units) as
// "cpu-us/"+unit, when the process's CPU time can be read.
func (m cpuMeter) report(b *testing.B, n int, unit string) {
	end, ok := processCPU()
	if !m.ok || !ok || n <= 0 {
		return
	}
	b.ReportMetric(float64(end-m.start)/float64(time.Microsecond)/float64(n), "cpu-us/"+unit)
}

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
// (the shape of the send path), reporting "msgs/s" and the process's CPU
// time per message ("cpu-us/msg", the benchmark's goroutines included)
// besides ns/op.
func RunPutBenchmark(b *testing.B, s store.Store) {
	payload := make([]byte, 256)
	ids := envelope.NewIDs()
	var seq atomic.Int64
	at := time.Now().UTC().Truncate(time.Millisecond)
	b.SetParallelism(64)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), startCPU()
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
	cpu.report(b, b.N, "msg")
}

// MarkRoutedBatch is the number of ids per MarkRouted call in the
// benchmarks: a batch of the pipeline.
const MarkRoutedBatch = 256

// RunMarkRoutedBenchmark measures committed MarkRouted calls of
// MarkRoutedBatch ids each (envelopes stored unrouted beforehand) from 4
// goroutines per GOMAXPROCS at once (the pipeline's workers), reporting
// "ids/s" and the process's CPU time per id ("cpu-us/id") besides ns/op
// (one op is one call).
func RunMarkRoutedBenchmark(b *testing.B, s store.Store) {
	payload := make([]byte, 256)
	at := time.Now().UTC().Truncate(time.Millisecond)
	batches := make([][]string, b.N)
	envs := make([]*envelope.Envelope, 0, 2*MarkRoutedBatch)
	for i := 0; i < b.N; i += 2 {
		envs = envs[:0]
		for range 2 * MarkRoutedBatch {
			envs = append(envs, &envelope.Envelope{ID: ids.New(at), Sender: alice,
				Recipient: fmt.Sprintf("urn:sm:user:r%d", len(envs)%1000), Payload: payload, CreatedAt: at})
		}
		if _, err := s.PutMessages(b.Context(), envs); err != nil {
			b.Fatal(err)
		}
		batches[i] = idsOf(envs[:MarkRoutedBatch])
		if i+1 < b.N {
			batches[i+1] = idsOf(envs[MarkRoutedBatch:])
		}
	}
	var next atomic.Int64
	b.SetParallelism(4)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), startCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.MarkRouted(b.Context(), batches[next.Add(1)-1]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*MarkRoutedBatch)/time.Since(start).Seconds(), "ids/s")
	cpu.report(b, b.N*MarkRoutedBatch, "id")
	b.StopTimer()
	if left, err := s.Unrouted(b.Context(), at.Add(time.Hour), 2*MarkRoutedBatch); err != nil || len(left) > MarkRoutedBatch {
		b.Fatalf("after the marks: %d unrouted, %v", len(left), err)
	}
}

// RunPutMarkRoutedBenchmark measures the durable path of a send once the
// API stores it and the pipeline marks it routed: RunPutBenchmark's load
// (one envelope per PutMessages call from 64 goroutines per GOMAXPROCS),
// while 4 markers mark the stored ids routed in MarkRouted calls of up to
// MarkRoutedBatch ids (what is waiting, as a pipeline batch). It reports
// "msgs/s" stored and marked and the process's CPU time per message
// ("cpu-us/msg") besides ns/op (one op is one envelope).
func RunPutMarkRoutedBenchmark(b *testing.B, s store.Store) {
	payload := make([]byte, 256)
	ids := envelope.NewIDs()
	var seq atomic.Int64
	at := time.Now().UTC().Truncate(time.Millisecond)
	stored := make(chan string, 4*MarkRoutedBatch)
	var markers sync.WaitGroup
	for range 4 {
		markers.Go(func() {
			batch := make([]string, 0, MarkRoutedBatch)
			for id := range stored {
				batch = append(batch, id)
				if len(batch) < MarkRoutedBatch && len(stored) > 0 {
					continue
				}
				if err := s.MarkRouted(b.Context(), batch); err != nil {
					b.Error(err)
				}
				batch = batch[:0]
			}
			if len(batch) > 0 {
				if err := s.MarkRouted(b.Context(), batch); err != nil {
					b.Error(err)
				}
			}
		})
	}
	b.SetParallelism(64)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), startCPU()
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
			stored <- e.ID
		}
	})
	close(stored)
	markers.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	cpu.report(b, b.N, "msg")
	b.StopTimer()
	if left, err := s.Unrouted(b.Context(), at.Add(time.Hour), 1); err != nil || len(left) > 0 {
		b.Fatalf("after the marks: %d unrouted, %v", len(left), err)
	}
}

const (
	// AckCallers is the number of goroutines calling Ack at once in
	// RunAckBenchmark: connections whose clients acknowledge at the same time.
	AckCallers = 64
	// AckBatch is the number of ids per Ack call in RunAckBenchmark.
	AckBatch = 5
)

// RunAckBenchmark measures committed Ack calls of AckBatch ids each (the
// envelopes stored beforehand, AckBatch per recipient and call) from
// AckCallers goroutines at once (the WebSocket read loops of as many
// connections), reporting "acks/s" (calls), "ids/s" and the process's
// CPU time per id ("cpu-us/id") besides ns/op (one op is one call). Every
// call must delete its AckBatch envelopes.
func RunAckBenchmark(b *testing.B, s store.Store) {
	payload := make([]byte, 256)
	at := time.Now().UTC().Truncate(time.Millisecond)
	calls := make([][]string, b.N)
	envs := make([]*envelope.Envelope, 0, 500)
	flush := func() {
		if _, err := s.PutMessages(b.Context(), envs); err != nil {
			b.Fatal(err)
		}
		envs = envs[:0]
	}
	for i := range calls {
		recipient := fmt.Sprintf("urn:sm:user:r%d", i%1000)
		calls[i] = make([]string, AckBatch)
		for j := range calls[i] {
			e := &envelope.Envelope{ID: ids.New(at), Sender: alice, Recipient: recipient, Payload: payload, CreatedAt: at}
			calls[i][j] = e.ID
			envs = append(envs, e)
		}
		if len(envs)+AckBatch > cap(envs) {
			flush()
		}
	}
	if len(envs) > 0 {
		flush()
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), startCPU()
	for range AckCallers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(calls) {
					return
				}
				n, err := s.Ack(b.Context(), fmt.Sprintf("urn:sm:user:r%d", i%1000), calls[i])
				if err != nil {
					b.Error(err)
					return
				}
				if n != AckBatch {
					b.Errorf("Ack of call %d deleted %d, want %d", i, n, AckBatch)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "acks/s")
	b.ReportMetric(float64(b.N*AckBatch)/elapsed.Seconds(), "ids/s")
	cpu.report(b, b.N*AckBatch, "id")
}

// RunPutNewBenchmark is RunPutBenchmark with PutNew (no claim): the store
// write of a send without an idempotency key.
func RunPutNewBenchmark(b *testing.B, s store.Store) {
	runSendWrites(b, s, func(ctx context.Context, e *envelope.Envelope, _ int64) error {
		_, err := s.PutNew(ctx, []store.NewMessage{{Envelope: e}})
		return err
	})
}

// RunPutKeyedBenchmark measures the store writes of sends with an
// idempotency key, one per call from 64 goroutines per GOMAXPROCS at once:
// the reservation of the key's record, then PutNew of the envelope
// claiming it (which marks it published in the same commit). It reports
// "msgs/s" besides ns/op.
func RunPutKeyedBenchmark(b *testing.B, s store.Store) {
	runSendWrites(b, s, func(ctx context.Context, e *envelope.Envelope, n int64) error {
		key := fmt.Sprintf("bench-%d", n)
		rec := store.Idempotency{Sender: e.Sender, Key: key, ID: e.ID, CreatedAt: e.CreatedAt, RequestHash: store.EnvelopeHash(e)}
		if _, ok, err := s.ReserveIdempotency(ctx, rec); err != nil || !ok {
			return fmt.Errorf("reserve %s: %v, %v", key, ok, err)
		}
		stored, err := s.PutNew(ctx, []store.NewMessage{{Envelope: e, Key: key}})
		if err == nil && !stored[0] {
			err = fmt.Errorf("put under a fresh claim %s not stored", key)
		}
		return err
	})
}

// RunPutAckBenchmark measures a message's store writes over its life:
// PutNew of one envelope, then the Ack of it by its recipient, from 64
// goroutines per GOMAXPROCS at once (sends and the acks of what was
// delivered share commits). It reports "msgs/s" besides ns/op and, when
// tombstones is not nil (it returns how many tombstones the store holds),
// "tombstones/op": what the acks left behind.
func RunPutAckBenchmark(b *testing.B, s store.Store, tombstones func() int) {
	runSendWrites(b, s, func(ctx context.Context, e *envelope.Envelope, _ int64) error {
		if _, err := s.PutNew(ctx, []store.NewMessage{{Envelope: e}}); err != nil {
			return err
		}
		n, err := s.Ack(ctx, e.Recipient, []string{e.ID})
		if err == nil && n != 1 {
			err = fmt.Errorf("ack of %s deleted %d, want 1", e.ID, n)
		}
		return err
	})
	if tombstones != nil {
		b.ReportMetric(float64(tombstones())/float64(b.N), "tombstones/op")
	}
}

// runSendWrites runs write for one new envelope (256-byte payload, one of
// 1000 recipients; n numbers it) per op from 64 goroutines per GOMAXPROCS
// at once, reporting "msgs/s" and the process's CPU time per message
// ("cpu-us/msg") besides ns/op.
func runSendWrites(b *testing.B, s store.Store, write func(ctx context.Context, e *envelope.Envelope, n int64) error) {
	payload := make([]byte, 256)
	ids := envelope.NewIDs()
	var seq atomic.Int64
	at := time.Now().UTC().Truncate(time.Millisecond)
	b.SetParallelism(64)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), startCPU()
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
			if err := write(b.Context(), e, n); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	cpu.report(b, b.N, "msg")
	b.StopTimer()
}

const (
	// LifeSenders is the number of senders in RunMessageLifeBenchmark,
	// each with one message in flight: routebench's default.
	LifeSenders = 16
	// LifeAckers is the number of recipients' connections acknowledging
	// at once in RunMessageLifeBenchmark.
	LifeAckers = 64
	// LifeMarkDelay is how late RunMessageLifeBenchmark marks messages
	// routed: the routing core's default (route.DefaultMarkDelay).
	LifeMarkDelay = time.Second
)

// RunMessageLifeBenchmark measures a durable message's store writes as
// the service makes them under routebench's load: LifeSenders senders
// each store one new message (PutNew, one of 1000 recipients, 256-byte
// payload) and wait for its commit before the next; each stored message
// goes to one of LifeAckers acknowledgers (the recipients' connections),
// which Ack it; and a marker marks the stored messages routed every
// LifeMarkDelay/4 once they are LifeMarkDelay old (most are acknowledged
// by then), as the routing core does. Group commit shares transactions
// between what waits at once, so a transaction holds at most about
// LifeSenders puts and their acks, as in the service. One op is one
// message. It reports "msgs/s" and the process's CPU time per message
// ("cpu-us/msg") besides ns/op.
func RunMessageLifeBenchmark(b *testing.B, s store.Store) {
	ctx := b.Context()
	payload := make([]byte, 256)
	ids := envelope.NewIDs()
	type stored struct {
		at        time.Time
		id        string
		recipient string
	}
	acks := make(chan stored, LifeSenders*4)
	var (
		markMu  sync.Mutex
		toMark  []stored
		failed  atomic.Bool
		pending sync.WaitGroup
	)
	fail := func(err error) {
		if failed.CompareAndSwap(false, true) {
			b.Error(err)
		}
	}
	var ackers sync.WaitGroup
	for range LifeAckers {
		ackers.Go(func() {
			for m := range acks {
				if n, err := s.Ack(ctx, m.recipient, []string{m.id}); err != nil || n != 1 {
					fail(fmt.Errorf("ack of %s: %d, %v", m.id, n, err))
				}
				pending.Done()
			}
		})
	}
	markOnce := func(cutoff time.Time) {
		markMu.Lock()
		k := 0
		for k < len(toMark) && (cutoff.IsZero() || !toMark[k].at.After(cutoff)) {
			k++
		}
		due := make([]string, k)
		for i := range due {
			due[i] = toMark[i].id
		}
		toMark = toMark[k:]
		markMu.Unlock()
		if len(due) > 0 {
			if err := s.MarkRouted(ctx, due); err != nil {
				fail(err)
			}
		}
	}
	stopMarks := make(chan struct{})
	var marker sync.WaitGroup
	marker.Go(func() {
		t := time.NewTicker(LifeMarkDelay / 4)
		defer t.Stop()
		for {
			select {
			case <-stopMarks:
				return
			case <-t.C:
				markOnce(time.Now().Add(-LifeMarkDelay))
			}
		}
	})
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), startCPU()
	var senders sync.WaitGroup
	for range LifeSenders {
		senders.Go(func() {
			for !failed.Load() {
				n := next.Add(1)
				if n > int64(b.N) {
					return
				}
				now := time.Now()
				e := &envelope.Envelope{ID: ids.New(now), Sender: "urn:sm:user:sender",
					Recipient: fmt.Sprintf("urn:sm:user:r%d", n%1000), Payload: payload, CreatedAt: now.UTC()}
				if _, err := s.PutNew(ctx, []store.NewMessage{{Envelope: e}}); err != nil {
					fail(err)
					return
				}
				m := stored{at: now, id: e.ID, recipient: e.Recipient}
				markMu.Lock()
				toMark = append(toMark, m)
				markMu.Unlock()
				pending.Add(1)
				acks <- m
			}
		})
	}
	senders.Wait()
	pending.Wait()
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	cpu.report(b, b.N, "msg")
	b.StopTimer()
	close(stopMarks)
	marker.Wait()
	markOnce(time.Time{})
	close(acks)
	ackers.Wait()
}
