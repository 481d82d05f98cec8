package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store/groupcommit"
	"github.com/go-routing-service/routingservice/internal/store/storetest"
)

// openProbed opens a store in a new schema and a probe of its writer: a
// table lock on messages blocks the writer's next insert or delete.
func openProbed(t *testing.T) (*Store, storetest.GroupCommitProbe) {
	t.Helper()
	url := os.Getenv("ROUTING_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("ROUTING_TEST_POSTGRES_URL is not set; set it to a PostgreSQL URL to run this test")
	}
	b := make([]byte, 8)
	rand.Read(b)
	schema := "storetest_gc_" + hex.EncodeToString(b)
	admin, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
		admin.Close(ctx)
	})
	s, err := Open(t.Context(), url, Options{Schema: schema, MaxConns: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // before the schema is dropped
	probe, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { probe.Close(context.Background()) })

	return s, storetest.GroupCommitProbe{
		Hold: func(t *testing.T) func() {
			lock, err := admin.Begin(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := lock.Exec(t.Context(), "LOCK TABLE "+pgx.Identifier{schema, "messages"}.Sanitize()+" IN EXCLUSIVE MODE"); err != nil {
				t.Fatal(err)
			}
			return func() {
				if err := lock.Rollback(context.WithoutCancel(t.Context())); err != nil {
					t.Error(err)
				}
			}
		},
		Waiting: func(t *testing.T) bool {
			var waiting int
			if err := probe.QueryRow(t.Context(), `SELECT COUNT(*) FROM pg_locks
				WHERE NOT granted AND relation = $1::regclass`, schema+".messages").Scan(&waiting); err != nil {
				t.Fatal(err)
			}
			return waiting > 0
		},
		Commits: s.groupCommits.Load,
		Unit:    "transactions",
	}
}

// TestGroupCommit blocks the writer's first insert behind a table lock while
// 48 callers queue up, then releases it: the queued calls must share
// transactions.
func TestGroupCommit(t *testing.T) {
	s, probe := openProbed(t)
	storetest.RunGroupCommitTest(t, s, probe)
}

// TestAckGroupCommit blocks the writer's first delete behind a table lock
// while 80 Ack callers queue up, then releases it: the acks must share
// transactions, each with its own count.
func TestAckGroupCommit(t *testing.T) {
	s, probe := openProbed(t)
	storetest.RunAckGroupCommitTest(t, s, probe)
}

// TestGroupCommitFallback puts an envelope PostgreSQL refuses (a NUL byte
// in a text column) in a batch with acks: only the put may fail.
func TestGroupCommitFallback(t *testing.T) {
	s, probe := openProbed(t)
	bad := &envelope.Envelope{ID: "01JBADENVELOPE", Sender: "urn:sm:user:a\x00", Recipient: "urn:sm:user:b",
		Payload: []byte("x"), CreatedAt: envelope.Now()}
	storetest.RunGroupCommitFallbackTest(t, s, probe, bad)
}

// TestCommitOrder runs batches of puts, acks and marks through the
// writer's CommitFunc directly, in a chosen order.
func TestCommitOrder(t *testing.T) {
	s, _ := openProbed(t)
	storetest.RunCommitOrderTest(t, s, func(t *testing.T, ws []storetest.Write) []bool {
		items := make([]groupcommit.Item, len(ws))
		for i, w := range ws {
			switch {
			case w.Put != nil:
				items[i] = groupcommit.Item{Kind: groupcommit.PutItem, Env: w.Put}
			case w.New != nil:
				items[i] = groupcommit.Item{Kind: groupcommit.NewItem, Env: w.New.Envelope, Key: w.New.Key, Check: w.New.CheckTombstone}
			case w.Ack != "":
				items[i] = groupcommit.Item{Kind: groupcommit.AckItem, ID: w.Ack, Recipient: w.Recipient}
			default:
				items[i] = groupcommit.Item{Kind: groupcommit.MarkItem, ID: w.Mark}
			}
		}
		results := make([]bool, len(items))
		// The writer is idle between the test's calls, which each return
		// only after their commit: this call is its only user.
		if err := s.commit(items, results); err != nil {
			t.Fatalf("commit: %v", err)
		}
		return results
	})
}
