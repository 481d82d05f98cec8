package postgres

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// How a program before migration 0008 records and reads an idempotency
// record: with the whole envelope.
const (
	oldReserveSQL = `INSERT INTO idempotency
		(sender, key, id, recipient, type, payload, ephemeral, created_at, published)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (sender, key) DO NOTHING`
	oldReadSQL = `SELECT id, recipient, type, payload, ephemeral, created_at, published
		FROM idempotency WHERE sender = $1 AND key = $2`
	// oldInsertSQL is how a program before migration 0008 stores an envelope.
	oldInsertSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed)
VALUES ($1, $2, $3, $4, $5, $6, $7, false) ON CONFLICT (id) DO NOTHING`
)

// TestUpgradeToSenderCountsAndHashedRecords opens a schema made at version
// 6, with messages and idempotency records holding envelopes: the sender
// counts start from the stored messages, and count what a program of
// version 6 stores beside this one; an old record answers with its id,
// time and the hash of its envelope; a record written now holds no
// payload and no recipient, and a program of version 6 reading it (a
// retry reaching it during a rolling upgrade) gets an error instead of an
// empty envelope to accept; records that such a program still writes
// answer correctly.
func TestUpgradeToSenderCountsAndHashedRecords(t *testing.T) {
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
	if err := migrateTo(ctx, cfg, schema, log, 6); err != nil {
		t.Fatal(err)
	}
	old, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(context.Background())
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const a, bSender, r = "urn:sm:user:a", "urn:sm:user:b", "urn:sm:user:r"
	for _, m := range []struct{ id, sender, payload string }{{"01JOLD0", a, "12"}, {"01JOLD1", a, "345"}, {"01JOLD2", bSender, "6"}} {
		if _, err := old.Exec(ctx, oldInsertSQL, m.id, m.sender, r, "chat", []byte(m.payload), false, at); err != nil {
			t.Fatal(err)
		}
	}
	oldEnv := &envelope.Envelope{ID: "01JOLDREC", Sender: a, Recipient: r, Type: "chat", Payload: []byte("old payload"), Ephemeral: true, CreatedAt: at}
	if _, err := old.Exec(ctx, oldReserveSQL, a, "old-key", oldEnv.ID, oldEnv.Recipient, oldEnv.Type, oldEnv.Payload, oldEnv.Ephemeral, at, true); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, url, Options{Schema: schema, MaxConns: 2, Logger: log})
	if err != nil {
		t.Fatalf("Open of a version 6 schema: %v", err)
	}
	defer s.Close()
	counts := func(when string, want map[string]store.SenderCount) {
		t.Helper()
		for sender, w := range want {
			if c, err := s.SenderPending(ctx, sender); err != nil || c != w {
				t.Fatalf("%s: SenderPending(%s) = %+v, %v; want %+v", when, sender, c, err, w)
			}
		}
	}
	counts("after the upgrade", map[string]store.SenderCount{a: {Messages: 2, Bytes: 5}, bSender: {Messages: 1, Bytes: 1}})
	if _, err := old.Exec(ctx, oldInsertSQL, "01JOLD3", bSender, r, "", []byte("7890"), false, at); err != nil {
		t.Fatal(err)
	}
	counts("after a version 6 program's insert", map[string]store.SenderCount{bSender: {Messages: 2, Bytes: 5}})

	retry := store.Idempotency{Sender: a, Key: "old-key", ID: "01JRETRY", CreatedAt: at.Add(time.Hour), RequestHash: store.EnvelopeHash(oldEnv)}
	got, fresh, err := s.ReserveIdempotency(ctx, retry)
	if err != nil || fresh {
		t.Fatalf("Reserve of a key recorded before the upgrade: %v, %v; want the old record", fresh, err)
	}
	if got.ID != oldEnv.ID || !got.CreatedAt.Equal(at) || !got.Published || !bytes.Equal(got.RequestHash, store.EnvelopeHash(oldEnv)) {
		t.Fatalf("old record read as %+v; want id %s, time %v, published, the envelope's hash", got, oldEnv.ID, at)
	}

	// A record written now: no payload, no recipient.
	newEnv := &envelope.Envelope{ID: "01JNEWREC", Sender: a, Recipient: r, Payload: []byte("new payload"), CreatedAt: at}
	rec := store.Idempotency{Sender: a, Key: "new-key", ID: newEnv.ID, CreatedAt: at, RequestHash: store.EnvelopeHash(newEnv)}
	if _, fresh, err := s.ReserveIdempotency(ctx, rec); err != nil || !fresh {
		t.Fatalf("Reserve: %v, %v", fresh, err)
	}
	var recipient *string
	var payload []byte
	if err := old.QueryRow(ctx, "SELECT recipient, payload FROM idempotency WHERE key = 'new-key'").Scan(&recipient, &payload); err != nil {
		t.Fatal(err)
	}
	if recipient != nil || payload != nil {
		t.Fatalf("new record holds recipient %v, payload %q; want neither", recipient, payload)
	}
	var (
		id, rcpt, typ string
		ephemeral     bool
		createdAt     time.Time
		published     bool
	)
	if err := old.QueryRow(ctx, oldReadSQL, a, "new-key").Scan(&id, &rcpt, &typ, &payload, &ephemeral, &createdAt, &published); err == nil {
		t.Fatal("a program of version 6 read a new record as an envelope; it must fail instead")
	}

	// A program of version 6 still writes records with the envelope.
	if _, err := old.Exec(ctx, oldReserveSQL, bSender, "old-program", "01JOLDPROG", r, "", []byte("x"), false, at, false); err != nil {
		t.Fatalf("a program of version 6 recording a key: %v", err)
	}
	got, fresh, err = s.ReserveIdempotency(ctx, store.Idempotency{Sender: bSender, Key: "old-program", ID: "01JOTHER", CreatedAt: at, RequestHash: []byte{1}})
	want := store.RequestHash(r, "", false, []byte("x"))
	if err != nil || fresh || got.ID != "01JOLDPROG" || got.Published || !bytes.Equal(got.RequestHash, want) {
		t.Fatalf("record of a version 6 program: %+v, %v, %v", got, fresh, err)
	}
}
