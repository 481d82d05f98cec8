package sqlite

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// TestGroupCommit holds the write connection while 32 callers queue up, then
// releases it: the queued calls must share transactions.
func TestGroupCommit(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// Taking the only write connection blocks the writer on its first batch.
	hold, err := s.w.Conn(t.Context())
	if err != nil {
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
	// Wait until the writer is blocked waiting for the connection.
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	deadline := time.After(10 * time.Second)
	for s.w.Stats().WaitCount == 0 {
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatal("writer never waited for the write connection")
		}
	}
	if err := hold.Close(); err != nil {
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
		t.Errorf("%d transactions for %d concurrent calls: no group commit", n, callers)
	} else {
		t.Logf("%d concurrent calls committed in %d transactions", callers, n)
	}
}

// TestPragmas checks the settings durability and concurrency rest on.
func TestPragmas(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checks := []struct {
		db     string
		pragma string
		want   string
	}{
		{"write", "journal_mode", "wal"},
		{"write", "synchronous", "2"}, // FULL
		{"write", "foreign_keys", "1"},
		{"write", "busy_timeout", fmt.Sprint(busyTimeoutMS)},
		{"read", "query_only", "1"},
		{"read", "busy_timeout", fmt.Sprint(busyTimeoutMS)},
		{"read", "foreign_keys", "1"},
	}
	for _, c := range checks {
		db := s.w
		if c.db == "read" {
			db = s.r
		}
		var got string
		if err := db.QueryRowContext(t.Context(), "PRAGMA "+c.pragma).Scan(&got); err != nil {
			t.Fatalf("%s PRAGMA %s: %v", c.db, c.pragma, err)
		}
		if got != c.want {
			t.Errorf("%s connection: %s = %s, want %s", c.db, c.pragma, got, c.want)
		}
	}
	var version int
	if err := s.r.QueryRowContext(t.Context(), "SELECT MAX(version) FROM schema_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	all, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if want := all[len(all)-1].version; version != want {
		t.Errorf("schema_version %d, want %d", version, want)
	}
}
