package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// TestGroupCommit blocks the writer's first insert behind a table lock while
// 32 callers queue up, then releases it: the queued calls must share
// statements.
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

	lock, err := admin.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(t.Context(), "LOCK TABLE "+pgx.Identifier{schema, "messages"}.Sanitize()+" IN EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	const callers = 32
	ids := envelope.NewIDs()
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Go(func() {
			e := &envelope.Envelope{ID: ids.New(time.Now()), Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b",
				Payload: []byte(fmt.Sprint(i)), CreatedAt: envelope.Now()}
			errs <- s.PutMessages(t.Context(), []*envelope.Envelope{e})
		})
	}
	// Wait until the writer's insert waits for the lock.
	var probe *pgx.Conn
	if probe, err = pgx.Connect(t.Context(), url); err != nil {
		t.Fatal(err)
	}
	defer probe.Close(context.Background())
	poll := time.NewTicker(2 * time.Millisecond)
	defer poll.Stop()
	deadline := time.After(10 * time.Second)
	for {
		var waiting int
		if err := probe.QueryRow(t.Context(), `SELECT COUNT(*) FROM pg_locks
			WHERE NOT granted AND relation = $1::regclass`, schema+".messages").Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatal("the writer never waited for the table lock")
		}
	}
	if err := lock.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("PutMessages: %v", err)
		}
	}
	p, err := s.Pending(t.Context(), "urn:sm:user:b", "", 500)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Envelopes) != callers {
		t.Fatalf("stored %d envelopes, want %d", len(p.Envelopes), callers)
	}
	if n := s.groupCommits.Load(); n >= callers {
		t.Errorf("%d statements for %d concurrent calls: no group commit", n, callers)
	} else {
		t.Logf("%d concurrent calls committed in %d statements", callers, n)
	}
}
