package sqlite

import (
	"database/sql"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// preRoutedInsertSQL is how a program before migration 0003 stores an
// envelope: without the routed column.
const preRoutedInsertSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`

// TestUpgradeToRouted opens a database made at schema version 2 (before
// routed marks): the envelopes it holds count as routed and stay pending,
// and new ones are stored unrouted.
func TestUpgradeToRouted(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	log := slog.New(slog.DiscardHandler)
	old, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, old, log, 2); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const recipient = "urn:sm:user:b"
	var oldIDs []string
	for i, id := range []string{"01JOLD0", "01JOLD1", "01JOLD2"} {
		if _, err := old.ExecContext(ctx, preRoutedInsertSQL, id, "urn:sm:user:a", recipient, "chat", []byte{byte(i)}, false, toMillis(at)); err != nil {
			t.Fatal(err)
		}
		oldIDs = append(oldIDs, id)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, path, Options{Logger: log})
	if err != nil {
		t.Fatalf("Open of a version 2 database: %v", err)
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
	if n, err := s.PendingCount(ctx, recipient); err != nil || n != 4 {
		t.Fatalf("PendingCount after a put: %d, %v; want 4", n, err)
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

// How a program before migration 0008 stores an envelope (without the
// tombstone column) and acknowledges one (a tombstone for every envelope
// deleted).
const (
	preTombstoneInsertSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed)
VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING`
	preTombstoneAckSQL = `INSERT INTO tombstones (id, recipient, acked_at)
SELECT id, recipient, ? FROM messages WHERE id = ?
ON CONFLICT (id) DO UPDATE SET acked_at = excluded.acked_at`
	preTombstoneDeleteSQL = `DELETE FROM messages WHERE id = ?`
)

// TestUpgradeToTombstoneFlag opens a database made at schema version 7
// (before the tombstone flag) holding envelopes, some of them acknowledged
// by the program of version 7: the envelopes stored before get a
// tombstone at their ack, so that a copy arriving again is not stored;
// those the older program acknowledged keep theirs; new messages this
// program stores get none from its acks.
func TestUpgradeToTombstoneFlag(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	log := slog.New(slog.DiscardHandler)
	old, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, old, log, 7); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const a, r = "urn:sm:user:a", "urn:sm:user:r"
	oldInsert := func(id string) {
		t.Helper()
		if _, err := old.ExecContext(ctx, preTombstoneInsertSQL, id, a, r, "", []byte(id), false, toMillis(at)); err != nil {
			t.Fatal(err)
		}
	}
	oldAck := func(id string) {
		t.Helper()
		tx, err := old.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if _, err := tx.ExecContext(ctx, preTombstoneAckSQL, toMillis(at), id); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, preTombstoneDeleteSQL, id); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	oldInsert("01JBEFORE")
	oldInsert("01JOLDACKED")
	oldAck("01JOLDACKED")
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, path, Options{Logger: log})
	if err != nil {
		t.Fatalf("Open of a version 7 database: %v", err)
	}
	defer s.Close()
	n1 := &envelope.Envelope{ID: "01JNEW1", Sender: a, Recipient: r, Payload: []byte("n1"), CreatedAt: at}
	n2 := &envelope.Envelope{ID: "01JNEW2", Sender: a, Recipient: r, Payload: []byte("n2"), CreatedAt: at}
	if _, err := s.PutNew(ctx, []store.NewMessage{{Envelope: n1}, {Envelope: n2}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PendingCount(ctx, r); err != nil || n != 3 {
		t.Fatalf("PendingCount: %d, %v; want 3", n, err)
	}
	if n, err := s.Ack(ctx, r, []string{"01JBEFORE", n1.ID}); err != nil || n != 2 {
		t.Fatalf("Ack: %d, %v; want 2", n, err)
	}
	again := []*envelope.Envelope{
		{ID: "01JBEFORE", Sender: a, Recipient: r, Payload: []byte("x"), CreatedAt: at},
		{ID: "01JOLDACKED", Sender: a, Recipient: r, Payload: []byte("x"), CreatedAt: at},
		n1,
	}
	acked, err := s.PutMessages(ctx, again)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(acked, []bool{true, true, false}) {
		t.Fatalf("PutMessages after the acks: acked %v, want [true true false] (a tombstone for all but the new message this program acked)", acked)
	}
	if n, err := s.PendingCount(ctx, r); err != nil || n != 2 {
		t.Fatalf("PendingCount at the end: %d, %v; want 2", n, err)
	}
}
