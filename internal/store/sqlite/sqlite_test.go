package sqlite_test

import (
	"database/sql"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
	"github.com/go-routing-service/routingservice/internal/store/storetest"
)

func openTemp(t testing.TB, opts sqlite.Options) *sqlite.Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.RunConformanceTests(t, func(t *testing.T) store.Store {
		return openTemp(t, sqlite.Options{})
	})
}

// TestConformanceSmallBatch runs the suite with batches of one envelope, so
// that group commit splits every concurrent burst.
func TestConformanceSmallBatch(t *testing.T) {
	storetest.RunConformanceTests(t, func(t *testing.T) store.Store {
		return openTemp(t, sqlite.Options{MaxBatch: 1})
	})
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := sqlite.Open(t.Context(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &envelope.Envelope{ID: "01JREOPEN", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: []byte{1, 2}, CreatedAt: envelope.Now()}
	if _, err := s.PutMessages(t.Context(), []*envelope.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A second open finds the schema at its version and the data in place.
	for range 2 {
		s, err = sqlite.Open(t.Context(), path, sqlite.Options{})
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		p, err := s.Pending(t.Context(), e.Recipient, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Envelopes) != 1 || p.Envelopes[0].ID != e.ID {
			t.Fatalf("after reopen: %d envelopes", len(p.Envelopes))
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// The database, its WAL and its shared-memory file are readable by their
// owner only: a new database, and one an older version left readable.
func TestFilesOwnerOnly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "store.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil { // as an older version left it
		t.Fatal(err)
	}
	for _, p := range []string{path, filepath.Join(dir, "new.db")} {
		s, err := sqlite.Open(t.Context(), p, sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		e := &envelope.Envelope{ID: "01JMODE", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: []byte{1}, CreatedAt: envelope.Now()}
		if _, err := s.PutMessages(t.Context(), []*envelope.Envelope{e}); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{p, p + "-wal", p + "-shm"} {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatal(err)
			}
			if m := fi.Mode().Perm(); m != 0o600 {
				t.Errorf("%s: mode %o, want 600", filepath.Base(f), m)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenRejectsBadPath(t *testing.T) {
	for _, p := range []string{"", filepath.Join(t.TempDir(), "x.db?mode=memory"), filepath.Join(t.TempDir(), "missing-dir", "x.db")} {
		if s, err := sqlite.Open(t.Context(), p, sqlite.Options{}); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

// BenchmarkPutMessages measures durable stores of one envelope per call
// from many goroutines at once (the shape of the send path), reporting msgs/s.
func BenchmarkPutMessages(b *testing.B) {
	s := openTemp(b, sqlite.Options{})
	defer s.Close()
	storetest.RunPutBenchmark(b, s)
}

// BenchmarkPutNew measures durable stores of one new message per PutNew
// call from many goroutines at once (a send without a key), reporting
// msgs/s.
func BenchmarkPutNew(b *testing.B) {
	s := openTemp(b, sqlite.Options{})
	defer s.Close()
	storetest.RunPutNewBenchmark(b, s)
}

// BenchmarkPutKeyed measures the store writes of sends with an
// idempotency key (reserve, then PutNew claiming the record), reporting
// msgs/s.
func BenchmarkPutKeyed(b *testing.B) {
	s := openTemp(b, sqlite.Options{})
	defer s.Close()
	storetest.RunPutKeyedBenchmark(b, s)
}

// BenchmarkPutAck measures a message's store writes over its life (PutNew,
// then its Ack) from many goroutines at once, reporting msgs/s and the
// tombstones left per message.
func BenchmarkPutAck(b *testing.B) {
	path := filepath.Join(b.TempDir(), "store.db")
	s, err := sqlite.Open(b.Context(), path, sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	storetest.RunPutAckBenchmark(b, s, func() int {
		db, err := sql.Open("sqlite", path+"?_pragma=query_only(1)")
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		var n int
		if err := db.QueryRow("SELECT count(*) FROM tombstones").Scan(&n); err != nil {
			b.Fatal(err)
		}
		return n
	})
}

// BenchmarkBacklog measures draining a 10,000-envelope backlog (fetch and ack).
func BenchmarkBacklog(b *testing.B) {
	s := openTemp(b, sqlite.Options{})
	defer s.Close()
	storetest.RunBacklogBenchmark(b, s)
}

// BenchmarkMarkRouted measures committed MarkRouted calls of 256 ids from
// several goroutines at once (the pipeline's workers), reporting ids/s.
func BenchmarkMarkRouted(b *testing.B) {
	s := openTemp(b, sqlite.Options{})
	defer s.Close()
	storetest.RunMarkRoutedBenchmark(b, s)
}

// BenchmarkPutMarkRouted measures BenchmarkPutMessages's load while every
// stored envelope is marked routed in batches of up to 256, reporting msgs/s.
func BenchmarkPutMarkRouted(b *testing.B) {
	s := openTemp(b, sqlite.Options{})
	defer s.Close()
	storetest.RunPutMarkRoutedBenchmark(b, s)
}

// BenchmarkAck measures committed Ack calls of 5 ids from 64 goroutines at
// once (the WebSocket read loops of as many connections), reporting acks/s.
func BenchmarkAck(b *testing.B) {
	s := openTemp(b, sqlite.Options{})
	defer s.Close()
	storetest.RunAckBenchmark(b, s)
}

// BenchmarkMessageLife measures a durable message's store writes as the
// service makes them under routebench's load (16 senders, acks by the
// recipients, routed marks a second late), reporting msgs/s and CPU time
// per message.
func BenchmarkMessageLife(b *testing.B) {
	s := openTemp(b, sqlite.Options{})
	defer s.Close()
	storetest.RunMessageLifeBenchmark(b, s)
}
