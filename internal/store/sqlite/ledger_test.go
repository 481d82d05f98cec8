package sqlite

import (
	"bufio"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

var quiet = slog.New(slog.DiscardHandler)

// farFuture is a cut-off after every envelope these tests store.
var farFuture = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

func openAt(t *testing.T, path string, opts Options) *Store {
	t.Helper()
	opts.Logger = quiet
	s, err := Open(t.Context(), path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// dbCounts reads the pending counts from the messages themselves.
func dbCounts(t *testing.T, db *sql.DB) (map[string]int, map[string]store.SenderCount, int64) {
	t.Helper()
	recipients := map[string]int{}
	senders := map[string]store.SenderCount{}
	var total int64
	rows, err := db.QueryContext(t.Context(), `SELECT recipient, sender, length(payload) FROM messages`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var r, sender string
		var n int64
		if err := rows.Scan(&r, &sender, &n); err != nil {
			t.Fatal(err)
		}
		recipients[r]++
		c := senders[sender]
		c.Messages++
		c.Bytes += n
		senders[sender] = c
		total++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return recipients, senders, total
}

// checkCounts checks that the ledger holds the counts of the messages on
// disk, and nothing at zero, and that the store answers them.
func checkCounts(t *testing.T, s *Store, when string) {
	t.Helper()
	recipients, senders, total := dbCounts(t, s.r)
	s.ledger.mu.Lock()
	gotR, gotS, gotTotal := maps.Clone(s.ledger.recipients), maps.Clone(s.ledger.senders), s.ledger.total
	s.ledger.mu.Unlock()
	if !maps.Equal(gotR, recipients) {
		t.Fatalf("%s: ledger's recipient counts %v, the messages' %v", when, gotR, recipients)
	}
	if !maps.Equal(gotS, senders) {
		t.Fatalf("%s: ledger's sender counts %v, the messages' %v", when, gotS, senders)
	}
	if gotTotal != total {
		t.Fatalf("%s: ledger's total %d, %d messages", when, gotTotal, total)
	}
	for r, n := range recipients {
		if got, err := s.PendingCount(t.Context(), r); err != nil || got != n {
			t.Fatalf("%s: PendingCount(%s) = %d, %v; want %d", when, r, got, err, n)
		}
	}
	for sender, c := range senders {
		if got, err := s.SenderPending(t.Context(), sender); err != nil || got != c {
			t.Fatalf("%s: SenderPending(%s) = %+v, %v; want %+v", when, sender, got, err, c)
		}
	}
	if got, err := s.PendingTotal(t.Context()); err != nil || got != total {
		t.Fatalf("%s: PendingTotal = %d, %v; want %d", when, got, err, total)
	}
}

// storedIDs returns the ids of the messages on disk in store order, and
// the seq of each.
func storedIDs(t *testing.T, db *sql.DB) ([]string, map[string]int64) {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), `SELECT id, seq FROM messages ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	seqs := map[string]int64{}
	for rows.Next() {
		var id string
		var seq int64
		if err := rows.Scan(&id, &seq); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		seqs[id] = seq
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids, seqs
}

// diskWatermark reads the routed watermark on disk.
func diskWatermark(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	var w int64
	if err := db.QueryRowContext(t.Context(), `SELECT seq FROM routed_watermark WHERE id = 1`).Scan(&w); err != nil {
		t.Fatal(err)
	}
	return w
}

func unroutedIDs(t *testing.T, s *Store) []string {
	t.Helper()
	got, err := s.Unrouted(t.Context(), farFuture, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(got))
	for i, e := range got {
		out[i] = e.ID
	}
	return out
}

// TestLedgerFollowsTheDatabase runs rounds of concurrent puts (PutMessages
// and PutNew), acks (by the recipient and by others), routed marks and
// retention, each round's calls grouped into shared commits, and checks
// after each round that the counts the store keeps in memory are those of
// the messages on disk, that Unrouted names exactly the messages stored
// and not marked, in store order, and that the watermark on disk is below
// every one of those; then that a reopened store rebuilds the same counts
// and reports as unrouted exactly what is above the watermark.
func TestLedgerFollowsTheDatabase(t *testing.T) {
	for _, maxBatch := range []int{0, 3} {
		t.Run(fmt.Sprintf("MaxBatch=%d", maxBatch), func(t *testing.T) {
			testLedgerFollowsTheDatabase(t, maxBatch)
		})
	}
}

func testLedgerFollowsTheDatabase(t *testing.T, maxBatch int) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openAt(t, path, Options{MaxBatch: maxBatch})
	defer func() { s.Close() }()
	rng := rand.New(rand.NewPCG(1, uint64(maxBatch)))
	recipients := []string{"urn:sm:user:r0", "urn:sm:user:r1", "urn:sm:user:r2", "urn:sm:user:r3", "urn:sm:user:r4"}
	senders := []string{"urn:sm:user:s0", "urn:sm:user:s1", "urn:sm:user:s2"}
	now := time.Now().UTC().Truncate(time.Millisecond)
	newIDs := envelope.NewIDs()
	marked := map[string]bool{} // ids marked routed, once stored
	var lastWatermark int64
	for round := range 12 {
		stored, _ := storedIDs(t, s.r)
		// This round's calls: each worker runs a few, all at once.
		var calls []func() error
		for range 8 {
			batch := make([]*envelope.Envelope, 1+rng.IntN(4))
			for i := range batch {
				age := time.Duration(rng.IntN(48)) * time.Hour
				e := &envelope.Envelope{ID: newIDs.New(now), Sender: senders[rng.IntN(len(senders))],
					Recipient: recipients[rng.IntN(len(recipients))], Payload: make([]byte, rng.IntN(40)), CreatedAt: now.Add(-age)}
				batch[i] = e
			}
			if rng.IntN(2) == 0 {
				calls = append(calls, func() error { _, err := s.PutMessages(ctx, batch); return err })
			} else {
				msgs := make([]store.NewMessage, len(batch))
				for i, e := range batch {
					msgs[i] = store.NewMessage{Envelope: e}
				}
				calls = append(calls, func() error { _, err := s.PutNew(ctx, msgs); return err })
			}
		}
		// Acks and marks of what earlier rounds stored.
		var toMark []string
		for _, id := range stored {
			switch rng.IntN(6) {
			case 0:
				toMark = append(toMark, id)
			case 1:
				r := recipients[rng.IntN(len(recipients))] // the recipient, or someone else
				calls = append(calls, func() error { _, err := s.Ack(ctx, r, []string{id, "unknown"}); return err })
			}
		}
		for len(toMark) > 0 {
			n := min(len(toMark), 1+rng.IntN(5))
			chunk := toMark[:n]
			toMark = toMark[n:]
			for _, id := range chunk {
				marked[id] = true
			}
			calls = append(calls, func() error { return s.MarkRouted(ctx, slices.Concat(chunk, []string{"unknown"})) })
		}
		rng.Shuffle(len(calls), func(i, j int) { calls[i], calls[j] = calls[j], calls[i] })
		errs := make([]error, len(calls))
		var wg sync.WaitGroup
		for i, call := range calls {
			wg.Go(func() { errs[i] = call() })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if round%4 == 3 {
			if _, err := s.DeleteBefore(ctx, now.Add(-40*time.Hour)); err != nil {
				t.Fatal(err)
			}
		}

		when := fmt.Sprintf("round %d", round)
		checkCounts(t, s, when)
		ids, seqs := storedIDs(t, s.r)
		var want []string
		for _, id := range ids {
			if !marked[id] {
				want = append(want, id)
			}
		}
		if got := unroutedIDs(t, s); !slices.Equal(got, want) {
			t.Fatalf("%s: Unrouted %v, want the %d stored and not marked %v", when, got, len(want), want)
		}
		w := diskWatermark(t, s.r)
		if w < lastWatermark {
			t.Fatalf("%s: the watermark went back from %d to %d", when, lastWatermark, w)
		}
		lastWatermark = w
		for _, id := range want {
			if seqs[id] <= w {
				t.Fatalf("%s: unrouted %s (seq %d) at or below the watermark %d", when, id, seqs[id], w)
			}
		}
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, Options{MaxBatch: maxBatch})
	checkCounts(t, s, "after reopening")
	ids, seqs := storedIDs(t, s.r)
	w := diskWatermark(t, s.r)
	var want []string
	for _, id := range ids {
		if seqs[id] > w {
			want = append(want, id)
		}
	}
	if got := unroutedIDs(t, s); !slices.Equal(got, want) {
		t.Fatalf("after reopening: Unrouted %v, want those above the watermark %d: %v", got, w, want)
	}
}

// TestReopenKeepsWhatTheWatermarkHolds checks what a store opened again
// (as after a crash: every write is committed when its call returns)
// reports unrouted: the messages above the routed watermark, marked or
// not; and that the watermark on disk moves with the marks, acks and puts.
func TestReopenKeepsWhatTheWatermarkHolds(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openAt(t, path, Options{})
	defer func() { s.Close() }()
	at := time.Now().UTC().Truncate(time.Millisecond)
	e := make([]*envelope.Envelope, 5)
	ids := make([]string, 5)
	for i := range e {
		e[i] = &envelope.Envelope{ID: envelope.NewIDs().New(at), Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: []byte{byte(i)}, CreatedAt: at}
		ids[i] = e[i].ID
	}
	if _, err := s.PutMessages(ctx, e); err != nil {
		t.Fatal(err)
	}
	_, seqs := storedIDs(t, s.r)
	reopen := func() {
		t.Helper()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openAt(t, path, Options{})
	}
	expect := func(when string, unrouted []string, watermark int64) {
		t.Helper()
		if got := unroutedIDs(t, s); !slices.Equal(got, unrouted) {
			t.Fatalf("%s: Unrouted %v, want %v", when, got, unrouted)
		}
		if got := diskWatermark(t, s.r); got != watermark {
			t.Fatalf("%s: watermark %d, want %d", when, got, watermark)
		}
	}
	if err := s.MarkRouted(ctx, []string{ids[1], ids[3]}); err != nil {
		t.Fatal(err)
	}
	expect("after marking 1 and 3", []string{ids[0], ids[2], ids[4]}, seqs[ids[0]]-1)
	reopen()
	expect("reopened after marking 1 and 3", ids, seqs[ids[0]]-1)

	if err := s.MarkRouted(ctx, ids[:3]); err != nil {
		t.Fatal(err)
	}
	expect("after marking 0 to 2", ids[3:], seqs[ids[2]])
	reopen()
	expect("reopened after marking 0 to 2", ids[3:], seqs[ids[2]])

	// An ack of a message not routed moves the watermark past it, in the
	// ack's own transaction; so does the mark of the last one.
	if n, err := s.Ack(ctx, "urn:sm:user:b", []string{ids[3]}); err != nil || n != 1 {
		t.Fatalf("Ack: %d, %v", n, err)
	}
	expect("after acking 3", ids[4:], seqs[ids[3]])
	if err := s.MarkRouted(ctx, ids[4:]); err != nil {
		t.Fatal(err)
	}
	expect("after marking 4", nil, seqs[ids[4]])
	reopen()
	expect("reopened with everything routed", nil, seqs[ids[4]])
	checkCounts(t, s, "reopened with everything routed")
	if n, err := s.PendingCount(ctx, "urn:sm:user:b"); err != nil || n != 4 {
		t.Fatalf("PendingCount %d, %v; want 4", n, err)
	}
}

// oldInsertSQL is how a program of schema version 8 stores an envelope
// (not routed), and oldMarkSQL how it marks one routed.
const (
	oldInsertSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed, tombstone)
VALUES (?, ?, ?, '', ?, 0, ?, 0, 0)`
	oldMarkSQL = `UPDATE messages SET routed = 1 WHERE id = ?`
)

// TestUpgradeMovesCountsAndMarksToMemory opens a database made at schema
// version 8, whose messages are partly marked routed: the counts start
// from the messages, the unrouted ones are exactly those not marked
// (routed ones between them stay routed, after a restart too), the
// watermark starts below the oldest unrouted one, and the count tables,
// their triggers and the partial index are gone.
func TestUpgradeMovesCountsAndMarksToMemory(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	old, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, old, quiet, 8); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	const a, b, r1, r2 = "urn:sm:user:a", "urn:sm:user:b", "urn:sm:user:r1", "urn:sm:user:r2"
	rows := []struct {
		id, sender, recipient, payload string
		routed                         bool
	}{
		{"01JM0", a, r1, "12", true},
		{"01JM1", a, r2, "345", false},
		{"01JM2", b, r1, "6", true},
		{"01JM3", b, r1, "7890", false},
		{"01JM4", a, r1, "", true},
	}
	for _, m := range rows {
		if _, err := old.ExecContext(ctx, oldInsertSQL, m.id, m.sender, m.recipient, []byte(m.payload), toMillis(at)); err != nil {
			t.Fatal(err)
		}
		if m.routed {
			if _, err := old.ExecContext(ctx, oldMarkSQL, m.id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	s := openAt(t, path, Options{})
	defer func() { s.Close() }()
	checkCounts(t, s, "after the upgrade")
	for r, want := range map[string]int{r1: 4, r2: 1} {
		if n, err := s.PendingCount(ctx, r); err != nil || n != want {
			t.Fatalf("PendingCount(%s) = %d, %v; want %d", r, n, err, want)
		}
	}
	for sender, want := range map[string]store.SenderCount{a: {Messages: 3, Bytes: 5}, b: {Messages: 2, Bytes: 5}} {
		if c, err := s.SenderPending(ctx, sender); err != nil || c != want {
			t.Fatalf("SenderPending(%s) = %+v, %v; want %+v", sender, c, err, want)
		}
	}
	_, seqs := storedIDs(t, s.r)
	if got := unroutedIDs(t, s); !slices.Equal(got, []string{"01JM1", "01JM3"}) {
		t.Fatalf("Unrouted after the upgrade: %v, want [01JM1 01JM3]", got)
	}
	if w := diskWatermark(t, s.r); w != seqs["01JM1"]-1 {
		t.Fatalf("watermark %d, want %d (below the oldest unrouted)", w, seqs["01JM1"]-1)
	}
	var left []string
	q := `SELECT name FROM sqlite_master WHERE name IN ('pending_counts', 'sender_counts', 'messages_unrouted',
		'messages_count_insert', 'messages_count_delete', 'messages_sender_count_insert', 'messages_sender_count_delete')`
	r, err := s.r.QueryContext(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var name string
		if err := r.Scan(&name); err != nil {
			t.Fatal(err)
		}
		left = append(left, name)
	}
	r.Close()
	if len(left) > 0 {
		t.Fatalf("left after the upgrade: %v", left)
	}

	// Marking the oldest unrouted one moves the watermark over the routed
	// one after it; a restart keeps 01JM2 routed and 01JM3 not.
	if err := s.MarkRouted(ctx, []string{"01JM1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, Options{})
	if got := unroutedIDs(t, s); !slices.Equal(got, []string{"01JM3"}) {
		t.Fatalf("Unrouted after a restart: %v, want [01JM3]", got)
	}
	if w := diskWatermark(t, s.r); w != seqs["01JM2"] {
		t.Fatalf("watermark %d, want %d", w, seqs["01JM2"])
	}
}

// TestOlderProgramRefusesMigratedDatabase checks that a program of an
// earlier schema version (one whose last migration is 8, or 5, the last
// of release 0.2.0) refuses to open a database this one migrated, so that
// none runs beside it on the counts and marks that migration 9 dropped.
func TestOlderProgramRefusesMigratedDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openAt(t, path, Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	all, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, last := range []int{8, 5} {
		err := migrateWith(t.Context(), db, quiet, all[:last], 0)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("is newer than this program's %d", last)) {
			t.Fatalf("a program of schema version %d opening this one's database: %v, want a refusal", last, err)
		}
	}
}

// TestOpenLocksTheFile checks that a second Store cannot open a file a
// Store has open, in the same process or in another, and that the lock
// goes with the Store: when it is closed, or its process killed.
func TestOpenLocksTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openAt(t, path, Options{})
	if second, err := Open(t.Context(), path, Options{Logger: quiet}); !errors.Is(err, ErrInUse) {
		if err == nil {
			second.Close()
		}
		t.Fatalf("second Open in the same process: %v, want ErrInUse", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Another process holds it.
	cmd := exec.Command(os.Args[0], "-test.run=^TestHoldStoreOpen$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SQLITE_TEST_HOLD="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	lines := bufio.NewScanner(stdout)
	ready := false
	for !ready && lines.Scan() {
		ready = lines.Text() == "holding"
	}
	if !ready {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the holding process did not open the store: %v", lines.Err())
	}
	if other, err := Open(t.Context(), path, Options{Logger: quiet}); !errors.Is(err, ErrInUse) {
		if err == nil {
			other.Close()
		}
		t.Fatalf("Open while another process holds the store: %v, want ErrInUse", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	s = openAt(t, path, Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestHoldStoreOpen is TestOpenLocksTheFile's other process: it opens the
// store named by SQLITE_TEST_HOLD, says "holding" and holds it until its
// standard input closes (or it is killed). Without the variable it does
// nothing.
func TestHoldStoreOpen(t *testing.T) {
	path := os.Getenv("SQLITE_TEST_HOLD")
	if path == "" {
		t.Skip("the other process of TestOpenLocksTheFile")
	}
	s := openAt(t, path, Options{})
	defer s.Close()
	fmt.Println("holding")
	bufio.NewReader(os.Stdin).ReadString('\n')
}
