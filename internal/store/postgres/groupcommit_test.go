package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/store/storetest"
)

// TestGroupCommit blocks the writer's first insert behind a table lock while
// 32 callers queue up, then releases it: the queued calls must share
// transactions.
func TestGroupCommit(t *testing.T) {
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
	s, err := Open(t.Context(), url, Options{Schema: schema, MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	probe, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close(context.Background())

	storetest.RunGroupCommitTest(t, s, storetest.GroupCommitProbe{
		// A table lock blocks the writer's first insert.
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
	})
}
