package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
)

// logBuffer collects JSON log lines; safe for the sweeper and the test at once.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records returns the logged records with the given message.
func (b *logBuffer) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(b.buf.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// eventually polls cond every few milliseconds until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func openStore(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// runSweep starts Sweep and returns a stop function that cancels it and
// waits for it to return.
func runSweep(t *testing.T, s store.Store, retention, window, interval time.Duration, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		store.Sweep(ctx, s, retention, window, interval, log)
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Sweep did not return after its context was cancelled")
		}
	}
	t.Cleanup(stop)
	return stop
}

func TestSweepDeletesExpired(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	ids := envelope.NewIDs()
	now := envelope.Now()
	mk := func(age time.Duration) *envelope.Envelope {
		at := now.Add(-age)
		return &envelope.Envelope{ID: ids.New(at), Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: []byte("p"), CreatedAt: at}
	}
	old, fresh := mk(3*time.Hour), mk(time.Minute)
	if _, err := s.PutMessages(ctx, []*envelope.Envelope{old, fresh}); err != nil {
		t.Fatal(err)
	}
	// Idempotency records live for 1 h here, messages for 2 h.
	record := func(key string, e *envelope.Envelope) store.Idempotency {
		return store.Idempotency{Sender: "urn:sm:user:a", Key: key, ID: e.ID, CreatedAt: e.CreatedAt, RequestHash: store.EnvelopeHash(e)}
	}
	oldRec := record("old", mk(90*time.Minute))
	freshRec := record("fresh", mk(time.Minute))
	for _, r := range []store.Idempotency{oldRec, freshRec} {
		if _, ok, err := s.ReserveIdempotency(ctx, r); err != nil || !ok {
			t.Fatalf("Reserve %s: %v, %v", r.Key, ok, err)
		}
	}

	logs := &logBuffer{}
	stop := runSweep(t, s, 2*time.Hour, time.Hour, 10*time.Millisecond, slog.New(slog.NewJSONHandler(logs, nil)))

	eventually(t, "the old message to be deleted", func() bool {
		p, err := s.Pending(ctx, "urn:sm:user:b", "", 10)
		if err != nil {
			t.Fatal(err)
		}
		return len(p.Envelopes) == 1
	})
	p, err := s.Pending(ctx, "urn:sm:user:b", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if p.Envelopes[0].ID != fresh.ID {
		t.Errorf("kept %s, want the fresh message %s", p.Envelopes[0].ID, fresh.ID)
	}
	// A deleted record frees its key; a kept one answers with its id.
	eventually(t, "the old idempotency record to be deleted", func() bool {
		_, ok, err := s.ReserveIdempotency(ctx, record(oldRec.Key, mk(0)))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	if got, ok, err := s.ReserveIdempotency(ctx, record(freshRec.Key, mk(0))); err != nil || ok || got.ID != freshRec.ID {
		t.Errorf("fresh idempotency record: %v, %v", ok, err)
	}
	stop()

	deleted := map[string]float64{}
	for _, rec := range logs.records(t, "store sweep") {
		deleted[rec["what"].(string)] += rec["deleted"].(float64)
	}
	if deleted["messages"] != 1 || deleted["idempotency_records"] != 1 {
		t.Errorf("logged deletions %v, want one message and one idempotency record", deleted)
	}
}

// TestSweepDeletesTombstones checks that the sweep forgets acks older than
// the idempotency window: the id can then be stored again.
func TestSweepDeletesTombstones(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	at := envelope.Now()
	e := &envelope.Envelope{ID: envelope.NewIDs().New(at), Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: []byte("p"), CreatedAt: at}
	if _, err := s.PutMessages(ctx, []*envelope.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Ack(ctx, e.Recipient, []string{e.ID}); err != nil || n != 1 {
		t.Fatalf("Ack: %d, %v", n, err)
	}
	if acked, err := s.PutMessages(ctx, []*envelope.Envelope{e}); err != nil || len(acked) != 1 || !acked[0] {
		t.Fatalf("put before the sweep: %v, %v; want [true]", acked, err)
	}

	// A window of a millisecond: the tombstone is soon older than that.
	logs := &logBuffer{}
	stop := runSweep(t, s, 0, time.Millisecond, 5*time.Millisecond, slog.New(slog.NewJSONHandler(logs, nil)))
	eventually(t, "the tombstone to be deleted", func() bool {
		for _, rec := range logs.records(t, "store sweep") {
			if rec["what"] == "ack_tombstones" && rec["deleted"].(float64) == 1 {
				return true
			}
		}
		return false
	})
	stop()
	if acked, err := s.PutMessages(ctx, []*envelope.Envelope{e}); err != nil || acked != nil {
		t.Fatalf("put after the sweep: %v, %v; want stored", acked, err)
	}
	p, err := s.Pending(ctx, e.Recipient, "", 10)
	if err != nil || len(p.Envelopes) != 1 || p.Envelopes[0].ID != e.ID {
		t.Fatalf("pending after the sweep and a put: %v, %v", p.Envelopes, err)
	}
}

func TestSweepDisabledHalves(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	at := envelope.Now().Add(-100 * time.Hour)
	e := &envelope.Envelope{ID: "01JKEEP", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: []byte{}, CreatedAt: at}
	if _, err := s.PutMessages(ctx, []*envelope.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	rec := store.Idempotency{Sender: "urn:sm:user:a", Key: "k", ID: e.ID, CreatedAt: e.CreatedAt, RequestHash: store.EnvelopeHash(e)}
	if _, ok, err := s.ReserveIdempotency(ctx, rec); err != nil || !ok {
		t.Fatal(ok, err)
	}
	// Retention off, window on: the record goes, the message stays.
	runSweep(t, s, 0, time.Hour, 10*time.Millisecond, slog.New(slog.DiscardHandler))
	eventually(t, "the idempotency record to be deleted", func() bool {
		_, ok, err := s.ReserveIdempotency(ctx, store.Idempotency{Sender: "urn:sm:user:a", Key: "k", ID: "x", CreatedAt: envelope.Now(), RequestHash: rec.RequestHash})
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	p, err := s.Pending(ctx, "urn:sm:user:b", "", 10)
	if err != nil || len(p.Envelopes) != 1 {
		t.Fatalf("message with retention disabled: %d, %v", len(p.Envelopes), err)
	}
}

func TestSweepSurvivesErrors(t *testing.T) {
	s := openStore(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	stop := runSweep(t, s, time.Hour, time.Hour, 5*time.Millisecond, slog.New(slog.NewJSONHandler(logs, nil)))
	// Failures are logged on every round and do not end Sweep.
	eventually(t, "two rounds of failures to be logged", func() bool {
		return len(logs.records(t, "store sweep failed")) >= 4
	})
	stop()
}
