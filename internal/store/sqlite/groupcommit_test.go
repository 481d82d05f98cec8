package sqlite

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/go-routing-service/routingservice/internal/store/storetest"
)

// TestGroupCommit holds the write connection while 32 callers queue up, then
// releases it: the queued calls must share transactions.
func TestGroupCommit(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.RunGroupCommitTest(t, s, storetest.GroupCommitProbe{
		// Taking the only write connection blocks the writer on its first batch.
		Hold: func(t *testing.T) func() {
			hold, err := s.w.Conn(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			return func() {
				if err := hold.Close(); err != nil {
					t.Error(err)
				}
			}
		},
		Waiting: func(*testing.T) bool { return s.w.Stats().WaitCount > 0 },
		Commits: s.groupCommits.Load,
		Unit:    "transactions",
	})
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
	if want := all[len(all)-1].Version; version != want {
		t.Errorf("schema_version %d, want %d", version, want)
	}
}
