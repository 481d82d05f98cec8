package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/go-routing-service/routingservice/internal/store"
)

// ledger is what the store keeps in memory of the messages it holds: how
// many each recipient and each sender has pending (and the sender's
// payload bytes), and which messages are not routed yet, in store order.
// The store is the only writer of its file (Open locks it), so the
// changes each of its commits makes are all the changes there are: the
// writer applies them after the commit (apply), and the ledger stays
// exact. Open rebuilds it from the messages table (load). Its methods
// are safe for concurrent use.
type ledger struct {
	mu sync.Mutex

	recipients map[string]int               // recipient -> pending messages (> 0)
	senders    map[string]store.SenderCount // sender -> pending messages (> 0) and their bytes
	total      int64                        // pending messages

	// The messages not routed: routes maps each one's id to what an ack
	// needs of it (its seq among them), and order[head:] holds them in
	// ascending seq, with the entries of those since routed or deleted
	// left in place (id "") until compact drops them. live is the number
	// of entries of order[head:] still there.
	routes map[string]ackRow
	order  []routeEntry
	head   int
	live   int
	// maxSeq is the highest seq the store stored (or the watermark it
	// opened with, if higher).
	maxSeq int64

	// removed is watermark's reusable set (the caller's goroutine: the
	// writer's, under mu).
	removed map[int64]struct{}
}

// routeEntry is a message not routed, as the ledger orders it.
type routeEntry struct {
	seq     int64
	created int64  // created_at, Unix milliseconds
	id      string // "" once routed or deleted
}

// change is one row that a commit stored or deleted.
type change struct {
	deleted   bool
	tombstone bool // an ack of it records a tombstone (stored rows)
	seq       int64
	created   int64 // created_at (stored rows)
	id        string
	recipient string
	sender    string
	bytes     int64 // payload length
}

func newLedger() *ledger {
	return &ledger{
		recipients: make(map[string]int),
		senders:    make(map[string]store.SenderCount),
		routes:     make(map[string]ackRow),
	}
}

// count adds n messages of recipient from sender with bytes payload
// bytes (n and bytes negative for deleted ones). Caller holds mu.
func (l *ledger) count(recipient, sender string, n int, bytes int64) {
	if c := l.recipients[recipient] + n; c > 0 {
		l.recipients[recipient] = c
	} else {
		delete(l.recipients, recipient)
	}
	c := l.senders[sender]
	c.Messages += n
	c.Bytes += bytes
	if c.Messages > 0 {
		l.senders[sender] = c
	} else {
		delete(l.senders, sender)
	}
	l.total += int64(n)
}

// addUnrouted records a stored message (c) as not routed. Its seq must
// be above every seq recorded before. Caller holds mu.
func (l *ledger) addUnrouted(c change) {
	l.routes[c.id] = ackRow{recipient: c.recipient, sender: c.sender, seq: c.seq, bytes: c.bytes, tombstone: c.tombstone}
	l.order = append(l.order, routeEntry{seq: c.seq, created: c.created, id: c.id})
	l.live++
	l.maxSeq = max(l.maxSeq, c.seq)
}

// removeUnrouted forgets id's entry, if it has one with seq (any seq when
// seq is 0). Caller holds mu.
func (l *ledger) removeUnrouted(id string, seq int64) {
	r, ok := l.routes[id]
	if !ok || (seq != 0 && r.seq != seq) {
		return
	}
	delete(l.routes, id)
	live := l.order[l.head:]
	i, found := slices.BinarySearchFunc(live, r.seq, func(e routeEntry, seq int64) int {
		switch {
		case e.seq < seq:
			return -1
		case e.seq > seq:
			return 1
		}
		return 0
	})
	if !found {
		return
	}
	live[i].id = ""
	l.live--
}

// apply records what a commit did, in order: changes stored and deleted
// rows, then marks names messages routed.
func (l *ledger) apply(changes []change, marks []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range changes {
		if c.deleted {
			l.count(c.recipient, c.sender, -1, -c.bytes)
			l.removeUnrouted(c.id, c.seq)
			continue
		}
		l.count(c.recipient, c.sender, 1, c.bytes)
		l.addUnrouted(c)
	}
	for _, id := range marks {
		l.removeUnrouted(id, 0)
	}
	l.compact()
}

// compact drops the entries of routed and deleted messages: those before
// the first message not routed at once, and the others once they are
// most of order. Caller holds mu.
func (l *ledger) compact() {
	for l.head < len(l.order) && l.order[l.head].id == "" {
		l.order[l.head] = routeEntry{}
		l.head++
	}
	if l.head == len(l.order) {
		l.order, l.head = l.order[:0], 0
		return
	}
	if n := len(l.order) - l.head; n > 2*l.live+64 {
		kept := l.order[:0]
		for _, e := range l.order[l.head:] {
			if e.id != "" {
				kept = append(kept, e)
			}
		}
		clear(l.order[len(kept):])
		l.order, l.head = kept, 0
		return
	}
	if l.head > 64 && l.head >= len(l.order)/2 {
		n := copy(l.order, l.order[l.head:])
		clear(l.order[n:])
		l.order, l.head = l.order[:n], 0
	}
}

// watermark returns the highest seq such that every message the store
// holds at or below it is routed, once a commit made changes and marks
// (not applied yet): the seq before the oldest message not routed that
// they leave, or the highest seq stored before them when they leave none.
// A message they store counts as not routed (its seq is above that
// highest one in any case).
func (l *ledger) watermark(changes []change, marks []string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.removed == nil {
		l.removed = make(map[int64]struct{})
	}
	removed := l.removed
	defer clear(removed)
	for _, c := range changes {
		if c.deleted {
			removed[c.seq] = struct{}{}
		}
	}
	for _, id := range marks {
		if r, ok := l.routes[id]; ok {
			removed[r.seq] = struct{}{}
		}
	}
	for _, e := range l.order[l.head:] {
		if e.id == "" {
			continue
		}
		if _, ok := removed[e.seq]; !ok {
			return e.seq - 1
		}
	}
	return l.maxSeq
}

// unrouted returns the seqs of up to limit messages not routed and
// created before cutoff (Unix milliseconds), in store order.
func (l *ledger) unrouted(cutoff int64, limit int) []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int64
	for _, e := range l.order[l.head:] {
		if len(out) == limit {
			break
		}
		if e.id != "" && e.created < cutoff {
			out = append(out, e.seq)
		}
	}
	return out
}

// acked looks up, for an ack, the messages not routed among ids (those
// for which want returns true): found(i, row) for each one it holds. It
// holds no other: the caller reads those from the database.
func (l *ledger) acked(n int, id func(i int) (string, bool), found func(i int, r ackRow)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range n {
		if id, ok := id(i); ok {
			if r, ok := l.routes[id]; ok {
				found(i, r)
			}
		}
	}
}

// pending returns recipient's pending count.
func (l *ledger) pending(recipient string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recipients[recipient]
}

// sender returns what sender has pending.
func (l *ledger) sender(sender string) store.SenderCount {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.senders[sender]
}

// pendingTotal returns the number of pending messages.
func (l *ledger) pendingTotal() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// loadLedger rebuilds the ledger from the database at Open: the counts
// with one GROUP BY over the messages, the messages not routed from those
// above the watermark (see migration 0009). It returns the ledger and the
// watermark read.
func loadLedger(ctx context.Context, db *sql.DB) (*ledger, int64, error) {
	l := newLedger()
	rows, err := db.QueryContext(ctx, `SELECT recipient, sender, COUNT(*), COALESCE(SUM(length(payload)), 0)
		FROM messages GROUP BY recipient, sender`)
	if err != nil {
		return nil, 0, fmt.Errorf("load counts: %w", err)
	}
	for rows.Next() {
		var recipient, sender string
		var n int
		var bytes int64
		if err := rows.Scan(&recipient, &sender, &n, &bytes); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("load counts: %w", err)
		}
		l.count(recipient, sender, n, bytes)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, 0, fmt.Errorf("load counts: %w", err)
	}

	var watermark, maxSeq int64
	if err := db.QueryRowContext(ctx, `SELECT (SELECT seq FROM routed_watermark WHERE id = 1),
		(SELECT COALESCE(MAX(seq), 0) FROM messages)`).Scan(&watermark, &maxSeq); err != nil {
		return nil, 0, fmt.Errorf("load routed watermark: %w", err)
	}
	l.maxSeq = max(watermark, maxSeq)
	rows, err = db.QueryContext(ctx, `SELECT seq, id, created_at, recipient, sender, length(payload), tombstone <> 0
		FROM messages WHERE seq > ? AND routed = 0 ORDER BY seq`, watermark)
	if err != nil {
		return nil, 0, fmt.Errorf("load unrouted: %w", err)
	}
	for rows.Next() {
		var c change
		if err := rows.Scan(&c.seq, &c.id, &c.created, &c.recipient, &c.sender, &c.bytes, &c.tombstone); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("load unrouted: %w", err)
		}
		l.addUnrouted(c)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, 0, fmt.Errorf("load unrouted: %w", err)
	}
	l.maxSeq = max(watermark, maxSeq)
	return l, watermark, nil
}
