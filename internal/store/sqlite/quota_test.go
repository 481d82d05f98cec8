package sqlite

import (
	"bytes"
	"database/sql"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// How a program before migration 0007 records and reads an idempotency
// record: with the whole envelope.
const (
	oldReserveSQL = `INSERT INTO idempotency
		(sender, key, id, recipient, type, payload, ephemeral, created_at, published)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sender, key) DO NOTHING`
	oldReadSQL = `SELECT id, recipient, type, payload, ephemeral, created_at, published
		FROM idempotency WHERE sender = ? AND key = ?`
)

// TestUpgradeToSenderCountsAndHashedRecords opens a database made at schema
// version 5, with messages and idempotency records holding envelopes:
// the sender counts start from the stored messages; an old record answers
// with its id, time and the hash of its envelope; a record written now
// holds no payload and no recipient, and a program of version 5 reading it
// (a retry reaching it during an upgrade) gets an error instead of an
// empty envelope to accept; records that such a program still writes
// answer correctly.
func TestUpgradeToSenderCountsAndHashedRecords(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	log := slog.New(slog.DiscardHandler)
	old, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, old, log, 5); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const a, b, r = "urn:sm:user:a", "urn:sm:user:b", "urn:sm:user:r"
	for i, m := range []struct{ id, sender, payload string }{{"01JOLD0", a, "12"}, {"01JOLD1", a, "345"}, {"01JOLD2", b, "6"}} {
		if _, err := old.ExecContext(ctx, preTombstoneInsertSQL, m.id, m.sender, r, "chat", []byte(m.payload), false, toMillis(at.Add(time.Duration(i)))); err != nil {
			t.Fatal(err)
		}
	}
	oldEnv := &envelope.Envelope{ID: "01JOLDREC", Sender: a, Recipient: r, Type: "chat", Payload: []byte("old payload"), Ephemeral: true, CreatedAt: at}
	if _, err := old.ExecContext(ctx, oldReserveSQL, a, "old-key", oldEnv.ID, oldEnv.Recipient, oldEnv.Type, oldEnv.Payload, oldEnv.Ephemeral, toMillis(at), true); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, path, Options{Logger: log})
	if err != nil {
		t.Fatalf("Open of a version 5 database: %v", err)
	}
	defer s.Close()
	for sender, want := range map[string]store.SenderCount{a: {Messages: 2, Bytes: 5}, b: {Messages: 1, Bytes: 1}} {
		if c, err := s.SenderPending(ctx, sender); err != nil || c != want {
			t.Fatalf("SenderPending(%s) after the upgrade: %+v, %v; want %+v", sender, c, err, want)
		}
	}

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
	var recipient sql.NullString
	var payload []byte
	if err := s.r.QueryRowContext(ctx, "SELECT recipient, payload FROM idempotency WHERE key = 'new-key'").Scan(&recipient, &payload); err != nil {
		t.Fatal(err)
	}
	if recipient.Valid || payload != nil {
		t.Fatalf("new record holds recipient %v, payload %q; want neither", recipient, payload)
	}
	var (
		id, typ   string
		ephemeral bool
		ms        int64
		published bool
	)
	if err := s.r.QueryRowContext(ctx, oldReadSQL, a, "new-key").Scan(&id, &recipient.String, &typ, &payload, &ephemeral, &ms, &published); err == nil {
		t.Fatal("a program of version 5 read a new record as an envelope; it must fail instead")
	}

	// A program of version 5 still writes records with the envelope.
	if _, err := s.w.ExecContext(ctx, oldReserveSQL, b, "old-program", "01JOLDPROG", r, "", []byte("x"), false, toMillis(at), false); err != nil {
		t.Fatalf("a program of version 5 recording a key: %v", err)
	}
	got, fresh, err = s.ReserveIdempotency(ctx, store.Idempotency{Sender: b, Key: "old-program", ID: "01JOTHER", CreatedAt: at, RequestHash: []byte{1}})
	want := store.RequestHash(r, "", false, []byte("x"))
	if err != nil || fresh || got.ID != "01JOLDPROG" || got.Published || !bytes.Equal(got.RequestHash, want) {
		t.Fatalf("record of a version 5 program: %+v, %v, %v", got, fresh, err)
	}
}
