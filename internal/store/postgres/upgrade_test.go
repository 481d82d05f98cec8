package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// preRoutedInsertSQL is how a program before migration 0003 stores an
// envelope: without the routed column.
const preRoutedInsertSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING`

// TestUpgradeToRouted opens a schema made at version 2 (before routed
// marks): the envelopes it holds count as routed and stay pending, new
// ones are stored unrouted, and rows that a program of version 2 still
// inserts (during a rolling upgrade) count as routed too.
func TestUpgradeToRouted(t *testing.T) {
	url := os.Getenv("ROUTING_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("ROUTING_TEST_POSTGRES_URL is not set; set it to a PostgreSQL URL to run this test")
	}
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	b := make([]byte, 8)
	rand.Read(b)
	schema := "storetest_up_" + hex.EncodeToString(b)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("drop schema: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	if err := migrateTo(ctx, cfg, schema, log, 2); err != nil {
		t.Fatal(err)
	}
	old, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(context.Background())
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const recipient = "urn:sm:user:b"
	var oldIDs []string
	for i, id := range []string{"01JOLD0", "01JOLD1", "01JOLD2"} {
		if _, err := old.Exec(ctx, preRoutedInsertSQL, id, "urn:sm:user:a", recipient, "chat", []byte{byte(i)}, false, at); err != nil {
			t.Fatal(err)
		}
		oldIDs = append(oldIDs, id)
	}

	s, err := Open(ctx, url, Options{Schema: schema, MaxConns: 2, Logger: log})
	if err != nil {
		t.Fatalf("Open of a version 2 schema: %v", err)
	}
	defer s.Close()
	// The pending count starts from the envelopes already stored.
	if n, err := s.PendingCount(ctx, recipient); err != nil || n != 3 {
		t.Fatalf("PendingCount after the upgrade: %d, %v; want 3", n, err)
	}
	future := time.Now().Add(100 * 365 * 24 * time.Hour)
	if got, err := s.Unrouted(ctx, future, 10); err != nil || len(got) != 0 {
		t.Fatalf("Unrouted after the upgrade: %d envelopes, %v; want none", len(got), err)
	}
	p, err := s.Pending(ctx, recipient, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := pageIDs(p.Envelopes); !slices.Equal(got, oldIDs) {
		t.Fatalf("pending after the upgrade: %v, want %v", got, oldIDs)
	}

	e := &envelope.Envelope{ID: "01JNEW", Sender: "urn:sm:user:a", Recipient: recipient, Payload: []byte("n"), CreatedAt: at}
	if _, err := s.PutMessages(ctx, []*envelope.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Exec(ctx, preRoutedInsertSQL, "01JOLDPROGRAM", "urn:sm:user:a", recipient, "", []byte{}, false, at); err != nil {
		t.Fatal(err)
	}
	// Every insert counts, this program's and an older one's.
	if n, err := s.PendingCount(ctx, recipient); err != nil || n != 5 {
		t.Fatalf("PendingCount after two inserts: %d, %v; want 5", n, err)
	}
	got, err := s.Unrouted(ctx, future, 10)
	if err != nil {
		t.Fatal(err)
	}
	if ids := pageIDs(got); !slices.Equal(ids, []string{e.ID}) {
		t.Fatalf("Unrouted after a put: %v, want just %s", ids, e.ID)
	}
	if err := s.MarkRouted(ctx, append(oldIDs, e.ID)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Unrouted(ctx, future, 10); err != nil || len(got) != 0 {
		t.Fatalf("Unrouted after MarkRouted: %d envelopes, %v; want none", len(got), err)
	}
}

func pageIDs(envs []*envelope.Envelope) []string {
	out := make([]string, len(envs))
	for i, e := range envs {
		out[i] = e.ID
	}
	return out
}

// How a program before migration 0010 stores envelopes (without the
// tombstone column) and acknowledges them (a tombstone for every envelope
// deleted).
const (
	preTombstoneInsertSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed)
SELECT id, sender, recipient, type, payload, ephemeral, created_at, false
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::boolean[], $7::timestamptz[])
	WITH ORDINALITY AS b(id, sender, recipient, type, payload, ephemeral, created_at, ord)
ORDER BY ord
ON CONFLICT (id) DO NOTHING`
	preTombstoneAckSQL = `WITH deleted AS (
	DELETE FROM messages m USING unnest($1::text[], $2::text[]) AS a(id, recipient)
	WHERE m.id = a.id AND m.recipient = a.recipient
	RETURNING m.id, m.recipient
), tombstoned AS (
	INSERT INTO tombstones (id, recipient, acked_at) SELECT id, recipient, $3 FROM deleted
	ON CONFLICT (id) DO UPDATE SET acked_at = EXCLUDED.acked_at
)
SELECT id, recipient FROM deleted`
)

// TestUpgradeToTombstoneFlag opens a schema made at version 9 (before the
// tombstone flag) holding envelopes, and runs a program of version 9
// beside this one (a rolling upgrade): the envelopes stored before, and
// those the older program still stores, get a tombstone at their ack (by
// either program), so that a copy arriving again is not stored; new
// messages this program stores get none from its acks, and one from the
// older program's (more than needed, and harmless).
func TestUpgradeToTombstoneFlag(t *testing.T) {
	url := os.Getenv("ROUTING_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("ROUTING_TEST_POSTGRES_URL is not set; set it to a PostgreSQL URL to run this test")
	}
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	b := make([]byte, 8)
	rand.Read(b)
	schema := "storetest_up_" + hex.EncodeToString(b)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("drop schema: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	if err := migrateTo(ctx, cfg, schema, log, 9); err != nil {
		t.Fatal(err)
	}
	old, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(context.Background())
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const a, r = "urn:sm:user:a", "urn:sm:user:r"
	oldInsert := func(id string) {
		t.Helper()
		if _, err := old.Exec(ctx, preTombstoneInsertSQL, []string{id}, []string{a}, []string{r}, []string{""},
			[][]byte{[]byte(id)}, []bool{false}, []time.Time{at}); err != nil {
			t.Fatal(err)
		}
	}
	oldAck := func(id string) {
		t.Helper()
		if _, err := old.Exec(ctx, preTombstoneAckSQL, []string{id}, []string{r}, at); err != nil {
			t.Fatal(err)
		}
	}
	oldInsert("01JBEFORE")

	s, err := Open(ctx, url, Options{Schema: schema, MaxConns: 2, Logger: log})
	if err != nil {
		t.Fatalf("Open of a version 9 schema: %v", err)
	}
	defer s.Close()
	oldInsert("01JOLDPROGRAM")
	n1 := &envelope.Envelope{ID: "01JNEW1", Sender: a, Recipient: r, Payload: []byte("n1"), CreatedAt: at}
	n2 := &envelope.Envelope{ID: "01JNEW2", Sender: a, Recipient: r, Payload: []byte("n2"), CreatedAt: at}
	if _, err := s.PutNew(ctx, []store.NewMessage{{Envelope: n1}, {Envelope: n2}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PendingCount(ctx, r); err != nil || n != 4 {
		t.Fatalf("PendingCount: %d, %v; want 4", n, err)
	}
	if n, err := s.Ack(ctx, r, []string{"01JBEFORE", "01JOLDPROGRAM", n1.ID}); err != nil || n != 3 {
		t.Fatalf("Ack: %d, %v; want 3", n, err)
	}
	oldAck(n2.ID)
	again := []*envelope.Envelope{
		{ID: "01JBEFORE", Sender: a, Recipient: r, Payload: []byte("x"), CreatedAt: at},
		{ID: "01JOLDPROGRAM", Sender: a, Recipient: r, Payload: []byte("x"), CreatedAt: at},
		n1, n2,
	}
	acked, err := s.PutMessages(ctx, again)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(acked, []bool{true, true, false, true}) {
		t.Fatalf("PutMessages after the acks: acked %v, want [true true false true] (a tombstone for all but the new message this program acked)", acked)
	}
	if n, err := s.PendingCount(ctx, r); err != nil || n != 1 {
		t.Fatalf("PendingCount at the end: %d, %v; want 1", n, err)
	}
}
