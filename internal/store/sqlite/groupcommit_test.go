package sqlite

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/go-routing-service/routingservice/internal/store/groupcommit"
	"github.com/go-routing-service/routingservice/internal/store/storetest"
)

// openProbed opens a store in a new file and a probe of its writer: taking
// the only write connection blocks the writer on its next commit.
func openProbed(t *testing.T) (*Store, storetest.GroupCommitProbe) {
	t.Helper()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, storetest.GroupCommitProbe{
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
		// WaitCount only grows: a store is probed once.
		Waiting: func(*testing.T) bool { return s.w.Stats().WaitCount > 0 },
		Commits: s.groupCommits.Load,
		Unit:    "transactions",
	}
}

// TestGroupCommit holds the write connection while 32 callers queue up, then
// releases it: the queued calls must share transactions.
func TestGroupCommit(t *testing.T) {
	s, probe := openProbed(t)
	storetest.RunGroupCommitTest(t, s, probe)
}

// TestAckGroupCommit holds the write connection while 80 Ack callers queue
// up, then releases it: the acks must share transactions, each with its
// own count.
func TestAckGroupCommit(t *testing.T) {
	s, probe := openProbed(t)
	storetest.RunAckGroupCommitTest(t, s, probe)
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
