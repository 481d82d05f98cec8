package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// openVacuuming opens a store in a new schema that vacuums every 50 ms
// tables with at least deadRows dead rows, and a connection of the test's
// own to the same database.
func openVacuuming(t *testing.T, deadRows int64) (*Store, *pgx.Conn) {
	t.Helper()
	url := os.Getenv("ROUTING_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("ROUTING_TEST_POSTGRES_URL is not set; set it to a PostgreSQL URL to run this test")
	}
	b := make([]byte, 8)
	rand.Read(b)
	schema := "storetest_vac_" + hex.EncodeToString(b)
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
	s, err := Open(t.Context(), url, Options{Schema: schema, MaxConns: 4, Logger: slog.New(slog.DiscardHandler),
		Vacuum: VacuumOptions{Interval: 50 * time.Millisecond, DeadRows: deadRows}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // before the schema is dropped
	return s, admin
}

// churn stores n envelopes for one recipient and acknowledges them all,
// leaving n dead rows in messages.
func churn(t *testing.T, s *Store, n int) {
	t.Helper()
	now := envelope.Now()
	envs := make([]*envelope.Envelope, n)
	ids := make([]string, n)
	for i := range envs {
		ids[i] = fmt.Sprintf("vac-%d-%d", now.UnixNano(), i)
		envs[i] = &envelope.Envelope{ID: ids[i], Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b",
			Payload: []byte("x"), CreatedAt: now}
	}
	if _, err := s.PutMessages(t.Context(), envs); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Ack(t.Context(), "urn:sm:user:b", ids); err != nil || got != n {
		t.Fatalf("Ack: %d, %v; want %d", got, err, n)
	}
}

// statsOf returns the last statistics the store read of table.
func statsOf(s *Store, table string) (TableStats, bool) {
	for _, t := range s.TableStats() {
		if t.Table == table {
			return t, true
		}
	}
	return TableStats{}, false
}

// waitFor polls cond every 20 ms until it holds or 30 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStoreVacuumsItsTables leaves dead rows in messages past the
// threshold and checks that the store vacuums the table by itself, and
// reports it.
func TestStoreVacuumsItsTables(t *testing.T) {
	s, admin := openVacuuming(t, 300)
	churn(t, s, 1000)
	waitFor(t, "messages vacuumed by the store", func() bool {
		st, ok := statsOf(s, "messages")
		return ok && st.Vacuums >= 1 && st.DeadRows < 300 && st.SinceVacuum >= 0
	})
	var vacuumed *time.Time
	if err := admin.QueryRow(t.Context(), `SELECT last_vacuum FROM pg_stat_user_tables
		WHERE schemaname = $1 AND relname = 'messages'`, s.schema).Scan(&vacuumed); err != nil || vacuumed == nil {
		t.Fatalf("pg_stat_user_tables.last_vacuum: %v, %v; want a time", vacuumed, err)
	}
	// A table under the threshold is left alone.
	if st, _ := statsOf(s, "targets"); st.Vacuums != 0 {
		t.Errorf("targets: %d vacuums, want none", st.Vacuums)
	}
}

// TestOneProcessVacuumsAtATime holds the schema's vacuum lock as another
// instance would and checks that the store reads the statistics but does
// not vacuum until the lock is free.
func TestOneProcessVacuumsAtATime(t *testing.T) {
	s, admin := openVacuuming(t, 300)
	if _, err := admin.Exec(t.Context(), "SELECT pg_advisory_lock($1)", vacuumLockKey(s.schema)); err != nil {
		t.Fatal(err)
	}
	churn(t, s, 1000)
	waitFor(t, "the dead rows in the statistics", func() bool {
		st, ok := statsOf(s, "messages")
		return ok && st.DeadRows >= 300
	})
	for p := s.maint.passes.Load() + 3; s.maint.passes.Load() < p; {
		time.Sleep(20 * time.Millisecond) // three more checks, each finding the lock held
	}
	if st, _ := statsOf(s, "messages"); st.Vacuums != 0 {
		t.Fatalf("vacuumed %d times while another process held the lock", st.Vacuums)
	}
	if _, err := admin.Exec(t.Context(), "SELECT pg_advisory_unlock($1)", vacuumLockKey(s.schema)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "messages vacuumed once the lock was free", func() bool {
		st, _ := statsOf(s, "messages")
		return st.Vacuums >= 1
	})
}
