package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/postgres"
	"github.com/go-routing-service/routingservice/internal/store/storetest"
)

const urlEnv = "ROUTING_TEST_POSTGRES_URL"

func databaseURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv(urlEnv)
	if url == "" {
		t.Skipf("%s is not set; set it to a PostgreSQL URL (e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable) to run this test", urlEnv)
	}
	return url
}

// freshSchema returns the name of a schema that does not exist yet and
// drops it (with everything in it) when the test ends.
func freshSchema(t testing.TB, url string) string {
	t.Helper()
	b := make([]byte, 8)
	rand.Read(b)
	schema := "storetest_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("drop schema %s: connect: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

func openFresh(t testing.TB, opts postgres.Options) *postgres.Store {
	t.Helper()
	url := databaseURL(t)
	opts.Schema = freshSchema(t, url)
	if opts.MaxConns == 0 {
		opts.MaxConns = 4
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := postgres.Open(t.Context(), url, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	databaseURL(t)
	storetest.RunConformanceTests(t, func(t *testing.T) store.Store {
		return openFresh(t, postgres.Options{})
	})
}

// TestConformanceSmallBatch runs the suite with batches of one envelope, so
// that group commit splits every concurrent burst.
func TestConformanceSmallBatch(t *testing.T) {
	databaseURL(t)
	storetest.RunConformanceTests(t, func(t *testing.T) store.Store {
		return openFresh(t, postgres.Options{MaxBatch: 1})
	})
}

// TestConcurrentOpen starts four stores at once on one new schema: the
// migration lock lets each apply or find the schema, never both half-way.
func TestConcurrentOpen(t *testing.T) {
	url := databaseURL(t)
	schema := freshSchema(t, url)
	const n = 4
	stores := make([]*postgres.Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = postgres.Open(t.Context(), url, postgres.Options{Schema: schema, MaxConns: 2})
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		defer stores[i].Close()
	}
	if t.Failed() {
		return
	}
	// Every instance sees what another wrote.
	e := &envelope.Envelope{ID: "01JCONCURRENTOPEN", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: []byte("x"), CreatedAt: envelope.Now()}
	if _, err := stores[0].PutMessages(t.Context(), []*envelope.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	for i, s := range stores {
		p, err := s.Pending(t.Context(), e.Recipient, "", 10)
		if err != nil || len(p.Envelopes) != 1 {
			t.Errorf("store %d: %d envelopes, %v", i, len(p.Envelopes), err)
		}
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rows, distinct int
	if err := conn.QueryRow(t.Context(), "SELECT COUNT(*), COUNT(DISTINCT version) FROM "+pgx.Identifier{schema, "schema_version"}.Sanitize()).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows == 0 || rows != distinct {
		t.Errorf("schema_version has %d rows for %d versions; want each version once", rows, distinct)
	}
}

func TestOpenBadURL(t *testing.T) {
	if s, err := postgres.Open(t.Context(), "postgres://user:secret@[::1", postgres.Options{}); err == nil {
		s.Close()
		t.Fatal("Open with a malformed URL succeeded")
	} else if got := err.Error(); strings.Contains(got, "secret") {
		t.Errorf("error reveals the password: %s", got)
	}
}

// BenchmarkPutMessages measures committed stores of one envelope per call
// from many goroutines at once (the shape of the send path), reporting msgs/s.
func BenchmarkPutMessages(b *testing.B) {
	s := openFresh(b, postgres.Options{MaxConns: 8})
	defer s.Close()
	storetest.RunPutBenchmark(b, s)
}

// BenchmarkBacklog measures draining a 10,000-envelope backlog (fetch and ack).
func BenchmarkBacklog(b *testing.B) {
	s := openFresh(b, postgres.Options{})
	defer s.Close()
	storetest.RunBacklogBenchmark(b, s)
}

// BenchmarkMarkRouted measures committed MarkRouted calls of 256 ids from
// several goroutines at once (the pipeline's workers), reporting ids/s.
func BenchmarkMarkRouted(b *testing.B) {
	s := openFresh(b, postgres.Options{MaxConns: 8})
	defer s.Close()
	storetest.RunMarkRoutedBenchmark(b, s)
}

// BenchmarkPutMarkRouted measures BenchmarkPutMessages's load while every
// stored envelope is marked routed in batches of up to 256, reporting msgs/s.
func BenchmarkPutMarkRouted(b *testing.B) {
	s := openFresh(b, postgres.Options{MaxConns: 8})
	defer s.Close()
	storetest.RunPutMarkRoutedBenchmark(b, s)
}

// BenchmarkAck measures committed Ack calls of 5 ids from 64 goroutines at
// once (the WebSocket read loops of as many connections), reporting acks/s.
func BenchmarkAck(b *testing.B) {
	s := openFresh(b, postgres.Options{MaxConns: 8})
	defer s.Close()
	storetest.RunAckBenchmark(b, s)
}

// A recipient's count row stays at zero when their last message is acked,
// and the sweep deletes it.
func TestPendingCountRowsAtZero(t *testing.T) {
	url := databaseURL(t)
	schema := freshSchema(t, url)
	s, err := postgres.Open(t.Context(), url, postgres.Options{Schema: schema, MaxConns: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	storetest.RunPendingCountRowsTest(t, s, func() int {
		var n int
		if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM "+pgx.Identifier{schema, "pending_counts"}.Sanitize()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	})
}

// A sender's count row stays at zero when its last message is acked, and
// the sweep deletes it.
func TestSenderCountRowsAtZero(t *testing.T) {
	url := databaseURL(t)
	schema := freshSchema(t, url)
	s, err := postgres.Open(t.Context(), url, postgres.Options{Schema: schema, MaxConns: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	storetest.RunSenderCountRowsTest(t, s, func() int {
		var n int
		if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM "+pgx.Identifier{schema, "sender_counts"}.Sanitize()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	})
}

// TestClaimRaceTwoInstances races PutNew calls claiming the same
// idempotency records through two stores on one schema (two instances):
// their transactions meet on the records' row locks, and exactly one of
// each record's claimants stores.
func TestClaimRaceTwoInstances(t *testing.T) {
	url := databaseURL(t)
	schema := freshSchema(t, url)
	open := func() *postgres.Store {
		s, err := postgres.Open(t.Context(), url, postgres.Options{Schema: schema, MaxConns: 4, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := open(), open()
	for range 3 {
		storetest.RunClaimRaceTest(t, a, b)
	}
}

// TestPutNewFailedCommitClaimsNothing puts, in one PutNew call, a new
// message claiming its record and an envelope PostgreSQL refuses (a NUL
// byte in a text column): the call fails, and the claim is undone with
// the rest (the record stays unpublished, nothing is stored).
func TestPutNewFailedCommitClaimsNothing(t *testing.T) {
	s := openFresh(t, postgres.Options{})
	defer s.Close()
	now := envelope.Now()
	good := &envelope.Envelope{ID: "01JGOODCLAIM", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: []byte("x"), CreatedAt: now}
	bad := &envelope.Envelope{ID: "01JBADENVELOPE", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b\x00", Payload: []byte("x"), CreatedAt: now}
	rec := store.Idempotency{Sender: good.Sender, Key: "k", ID: good.ID, CreatedAt: now, RequestHash: store.EnvelopeHash(good)}
	if _, ok, err := s.ReserveIdempotency(t.Context(), rec); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, err := s.PutNew(t.Context(), []store.NewMessage{{Envelope: good, Key: "k"}, {Envelope: bad}}); err == nil {
		t.Fatal("PutNew with an envelope the server refuses succeeded")
	}
	got, _, err := s.ReserveIdempotency(t.Context(), rec)
	if err != nil || got.Published {
		t.Fatalf("record after the failed put: published %v, %v; want unpublished", got.Published, err)
	}
	if stored, err := s.Stored(t.Context(), []string{good.ID}); err != nil || len(stored) != 0 {
		t.Fatalf("stored after the failed put: %v, %v; want nothing", stored, err)
	}
	// The same claim then succeeds.
	if stored, err := s.PutNew(t.Context(), []store.NewMessage{{Envelope: good, Key: "k"}}); err != nil || !stored[0] {
		t.Fatalf("PutNew after the failure: %v, %v; want stored", stored, err)
	}
}

// BenchmarkPutNew measures committed stores of one new message per PutNew
// call from many goroutines at once (a send without a key), reporting
// msgs/s.
func BenchmarkPutNew(b *testing.B) {
	s := openFresh(b, postgres.Options{MaxConns: 8})
	defer s.Close()
	storetest.RunPutNewBenchmark(b, s)
}

// BenchmarkPutKeyed measures the store writes of sends with an
// idempotency key (reserve, then PutNew claiming the record), reporting
// msgs/s.
func BenchmarkPutKeyed(b *testing.B) {
	s := openFresh(b, postgres.Options{MaxConns: 8})
	defer s.Close()
	storetest.RunPutKeyedBenchmark(b, s)
}

// BenchmarkPutAck measures a message's store writes over its life (PutNew,
// then its Ack) from many goroutines at once, reporting msgs/s and the
// tombstones left per message.
func BenchmarkPutAck(b *testing.B) {
	url := databaseURL(b)
	schema := freshSchema(b, url)
	s, err := postgres.Open(b.Context(), url, postgres.Options{Schema: schema, MaxConns: 8, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	storetest.RunPutAckBenchmark(b, s, func() int {
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(context.Background())
		var n int
		if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM "+pgx.Identifier{schema, "tombstones"}.Sanitize()).Scan(&n); err != nil {
			b.Fatal(err)
		}
		return n
	})
}
