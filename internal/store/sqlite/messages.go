package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/groupcommit"
)

const (
	// maxPage caps Pending's limit (the client contract's maximum).
	maxPage = 500
	// idChunk is the number of ids one statement with an IN list takes (a
	// tombstone lookup of PutMessages; a recipient lookup, tombstone insert
	// or DELETE of Ack; an UPDATE of MarkRouted): more than a full
	// group-commit batch (DefaultMaxBatch), far fewer than SQLite's limit
	// of 32766 parameters.
	idChunk = 1000
	// retentionChunk is the number of rows one DELETE of DeleteBefore takes,
	// so that retention never holds the write lock for long.
	retentionChunk = 5000
)

// insertMessageSQL stores one envelope, not routed, unless its id is
// stored. The last argument says whether an ack of it records a tombstone
// (1 for PutMessages, 0 for PutNew; see migration 0008).
const insertMessageSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed, tombstone)
VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING`

// claimSQL claims the idempotency record of a new message (sender, key):
// it marks it published, and changes a row only where it was not.
const claimSQL = `UPDATE idempotency SET published = 1 WHERE sender = ? AND key = ? AND published = 0`

// markRoutedSQL, followed by an IN list, marks stored envelopes routed. It
// leaves rows already routed alone, so that a repeated mark writes nothing.
const markRoutedSQL = `UPDATE messages SET routed = 1 WHERE routed = 0 AND id IN (`

// writeKind says what one item of the group-commit writer does.
type writeKind uint8

const (
	putWrite  writeKind = iota // store env (PutMessages)
	newWrite                   // store env as a new message, under its claim if any (PutNew)
	ackWrite                   // delete recipient's envelope id, with a tombstone if it needs one (Ack)
	markWrite                  // mark the envelope id routed (MarkRouted)
)

// write is one item of the group-commit writer: one envelope of a
// PutMessages or PutNew call, one id of an Ack call, or one id of a
// MarkRouted call. Its result (the writer's R) is, for a put, whether the
// id had a tombstone (so the envelope was not stored); for a new message,
// whether it is stored (see store.Messages.PutNew); and for an ack,
// whether this item deleted the envelope.
type write struct {
	kind      writeKind
	env       *envelope.Envelope // putWrite, newWrite
	key       string             // newWrite: the idempotency key claimed ("" for none)
	check     bool               // newWrite: CheckTombstone
	id        string             // ackWrite, markWrite
	recipient string             // ackWrite
}

// checksTombstone reports whether w is a put that must not store an id
// with a tombstone.
func (w write) checksTombstone() bool {
	return w.kind == putWrite || (w.kind == newWrite && w.check)
}

// PutMessages stores envs, not routed, idempotently on id, in the order
// given, except those whose id has a tombstone (acked[i] true; see
// store.Messages). It returns once the transaction holding them committed
// (durably), or with ctx's error if ctx ends first, in which case they may
// or may not have been stored.
func (s *Store) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	return groupcommit.PutMessages(ctx, s.writer, "sqlite", envs, func(e *envelope.Envelope) write {
		return write{kind: putWrite, env: e}
	})
}

// PutNew stores msgs' envelopes as new messages, not routed, in the order
// given, without a tombstone lookup (except for those with
// CheckTombstone) and marked so that their acks record none; one with a
// claim only if the same transaction claims its idempotency record (see
// store.Messages.PutNew). It returns once the transaction holding them
// committed (durably), or with ctx's error if ctx ends first, in which
// case they may or may not have been stored.
func (s *Store) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	return groupcommit.PutNew(ctx, s.writer, "sqlite", msgs, func(m store.NewMessage) write {
		return write{kind: newWrite, env: m.Envelope, key: m.Key, check: m.CheckTombstone}
	})
}

// MarkRouted marks the stored envelopes with these ids routed, ignoring
// ids not stored. The group-commit writer commits the marks together with
// the PutMessages, Ack and MarkRouted calls waiting at the same time; it
// returns once they are committed (durably), or with ctx's error if ctx
// ends first, in which case they may or may not be.
func (s *Store) MarkRouted(ctx context.Context, ids []string) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return groupcommit.MarkRouted(ctx, s.writer, "sqlite", ids, func(id string) write {
		return write{kind: markWrite, id: id}
	})
}

// Ack deletes recipient's envelopes with these ids, records a tombstone of
// each that needs one (stored by PutMessages) in the same transaction, and
// returns how many it deleted; other
// recipients' and unknown ids are ignored, and an id given twice is counted
// once. The group-commit writer commits the ack together with the
// PutMessages, Ack and MarkRouted calls waiting at the same time, as if
// each ran alone in the order they reached it; it returns once the ack is
// committed (durably), or with ctx's error if ctx ends first, in which case
// it may or may not be.
func (s *Store) Ack(ctx context.Context, recipient string, ids []string) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	return groupcommit.Ack(ctx, s.writer, "sqlite", ids, func(id string) write {
		return write{kind: ackWrite, id: id, recipient: recipient}
	})
}

// commit writes items in one transaction, with the effect of running the
// puts and acks one at a time in the order of items, and the routed marks
// last (so that an id stored and marked in the same batch ends up routed).
// It takes items in segments (see segment): each segment's puts, then
// its acks. It is the group-commit writer's CommitFunc: it runs on the
// writer goroutine only. The transaction is immediate (it takes the
// database's write lock at BEGIN), so no other process's write can commit
// between the tombstone lookup and the inserts, nor between an ack's
// lookup of the recipients and its delete.
func (s *Store) commit(items []write, results []bool) error {
	s.groupCommits.Add(1)
	// The batch belongs to several callers: no single caller's context may
	// abort it. busy_timeout bounds how long it can wait for a lock.
	ctx := context.Background()
	if err := s.prepareBatch(ctx, items); err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap("write: begin", err)
	}
	defer tx.Rollback()
	var ackedAt int64
	marks := false
	for start := 0; start < len(items); {
		seg := s.segment(items, start)
		end := seg.end
		if seg.puts > 0 {
			if err := s.put(ctx, tx, items[start:end], results[start:end]); err != nil {
				return err
			}
		}
		if seg.acks > 0 {
			if ackedAt == 0 {
				ackedAt = toMillis(time.Now())
			}
			if err := s.ack(ctx, tx, items[start:end], results[start:end], ackedAt); err != nil {
				return err
			}
		}
		marks = marks || seg.marks > 0
		start = end
	}
	if marks {
		if err := s.markRouted(ctx, tx, items); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return s.wrap("write: commit", err)
	}
	return nil
}

// prepareBatch prepares the IN-list statements that commit may run for
// items and are not prepared yet (see prepareIn): it must run before the
// transaction begins, as preparing takes the write connection.
func (s *Store) prepareBatch(ctx context.Context, items []write) error {
	var checks, acks, marks int
	for _, w := range items {
		switch w.kind {
		case putWrite, newWrite:
			if w.checksTombstone() {
				checks++
			}
		case ackWrite:
			acks++
		case markWrite:
			marks++
		}
	}
	for _, p := range [...]struct {
		q inQuery
		n int
	}{
		{tombstoneLookup, checks},
		{ackLookup, acks},
		{tombstoneInsert, acks},
		{ackDelete, acks},
		{markRoutedUpdate, marks},
	} {
		if err := s.prepareIn(ctx, p.q, p.n); err != nil {
			return err
		}
	}
	return nil
}

// segment is a run items[start:end] of a batch that commit writes as all
// its puts, in order, then all its acks, in order: that has the effect of
// the order of items because no put in it stores an id that an ack before
// it in the run acknowledges (the only put and ack that do not commute).
type segment struct {
	end               int
	puts, acks, marks int
}

// segment returns the longest segment of items that starts at start. In
// the common batch (no put of an id acknowledged earlier in the batch) it
// is the whole batch.
func (s *Store) segment(items []write, start int) segment {
	seg := segment{end: len(items)}
	clear(s.segAcks)
	for i := start; i < len(items); i++ {
		switch w := items[i]; w.kind {
		case putWrite, newWrite:
			if _, ok := s.segAcks[w.env.ID]; ok {
				seg.end = i
				return seg
			}
			seg.puts++
		case ackWrite:
			if s.segAcks == nil {
				s.segAcks = make(map[string]struct{})
			}
			s.segAcks[w.id] = struct{}{}
			seg.acks++
		case markWrite:
			seg.marks++
		}
	}
	return seg
}

// put stores the envelopes among items, in order. A put (PutMessages)
// whose id has a tombstone is not stored and marked in results (acked). A
// new message (PutNew) with a claim first claims its idempotency record
// (claimSQL) and is stored only if that changed the record; one with
// CheckTombstone is not stored if its id has a tombstone; results marks
// those stored. The tombstone lookup covers only the puts that need it.
func (s *Store) put(ctx context.Context, tx *sql.Tx, items []write, results []bool) error {
	gone, err := s.tombstoned(ctx, tx, items)
	if err != nil {
		return err
	}
	stmt := tx.StmtContext(ctx, s.insert)
	var claim *sql.Stmt
	for i, w := range items {
		tombstone := true
		switch w.kind {
		case putWrite:
			if _, ok := gone[w.env.ID]; ok {
				results[i] = true // acknowledged before
				continue
			}
		case newWrite:
			if w.key != "" {
				if claim == nil {
					claim = tx.StmtContext(ctx, s.claim)
				}
				res, err := claim.ExecContext(ctx, w.env.Sender, w.key)
				if err != nil {
					return s.wrap("put new "+w.env.ID+": claim", err)
				}
				if n, err := res.RowsAffected(); err != nil {
					return s.wrap("put new "+w.env.ID+": claim", err)
				} else if n == 0 {
					continue // claimed by another put, or no record: not stored
				}
			}
			if _, ok := gone[w.env.ID]; ok && w.check {
				continue // stored and acknowledged before: its claim is taken, nothing stored
			}
			results[i] = true
			tombstone = false
		default:
			continue
		}
		e := w.env
		payload := e.Payload
		if payload == nil {
			payload = []byte{}
		}
		if _, err := stmt.ExecContext(ctx, e.ID, e.Sender, e.Recipient, e.Type, payload, e.Ephemeral, toMillis(e.CreatedAt), tombstone); err != nil {
			return s.wrap("put "+e.ID, err)
		}
	}
	return nil
}

// tombstoned returns the ids of the envelopes among items that need a
// tombstone lookup (checksTombstone) and have a tombstone (nil when none
// has), looked up with one statement per idChunk ids.
func (s *Store) tombstoned(ctx context.Context, tx *sql.Tx, items []write) (map[string]struct{}, error) {
	var gone map[string]struct{}
	err := s.inChunks(len(items), func(i int) (string, bool) {
		w := items[i]
		if !w.checksTombstone() {
			return "", false
		}
		return w.env.ID, true
	}, func(args []any) error {
		stmt, args := s.inStmt(ctx, tx, tombstoneLookup, args)
		rows, err := stmt.QueryContext(ctx, args...)
		if err != nil {
			return s.wrap("put: tombstone lookup", err)
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return s.wrap("put: tombstone lookup", err)
			}
			if gone == nil {
				gone = make(map[string]struct{})
			}
			gone[id] = struct{}{}
		}
		if err := rows.Err(); err != nil {
			return s.wrap("put: tombstone lookup", err)
		}
		return nil
	})
	return gone, err
}

// ack deletes the envelopes that the acks among items acknowledge, with a
// tombstone stamped ackedAt of each that needs one (stored with tombstone
// = 1), and marks in deleted the ack items
// that deleted one: the first, in order, of the items that ack a stored
// id for its recipient (so an id acked twice counts once, and an id acked
// by someone else not at all). It looks up the recipients of the ids,
// records the tombstones and deletes the rows with one statement each per
// idChunk ids.
func (s *Store) ack(ctx context.Context, tx *sql.Tx, items []write, deleted []bool, ackedAt int64) error {
	if s.owners == nil {
		s.owners = make(map[string]string)
	}
	owners := s.owners
	defer clear(owners)
	err := s.inChunks(len(items), func(i int) (string, bool) {
		return items[i].id, items[i].kind == ackWrite
	}, func(args []any) error {
		stmt, args := s.inStmt(ctx, tx, ackLookup, args)
		rows, err := stmt.QueryContext(ctx, args...)
		if err != nil {
			return s.wrap("ack: lookup", err)
		}
		defer rows.Close()
		for rows.Next() {
			var id, recipient string
			if err := rows.Scan(&id, &recipient); err != nil {
				return s.wrap("ack: lookup", err)
			}
			owners[id] = recipient
		}
		if err := rows.Err(); err != nil {
			return s.wrap("ack: lookup", err)
		}
		return nil
	})
	if err != nil || len(owners) == 0 {
		return err
	}
	matched := s.ackIDs[:0]
	defer func() {
		clear(matched) // drop references to the ids
		s.ackIDs = matched[:0]
	}()
	for i, w := range items {
		if w.kind != ackWrite {
			continue
		}
		if r, ok := owners[w.id]; ok && r == w.recipient {
			deleted[i] = true
			delete(owners, w.id) // a later ack of the same id deletes nothing
			matched = append(matched, w.id)
		}
	}
	return s.inChunks(len(matched), func(i int) (string, bool) {
		return matched[i], true
	}, func(args []any) error {
		insert, padded := s.inStmt(ctx, tx, tombstoneInsert, args)
		withTime := append(append(s.timeArgs[:0], ackedAt), padded...)
		defer func() {
			clear(withTime) // drop references to the ids
			s.timeArgs = withTime[:0]
		}()
		if _, err := insert.ExecContext(ctx, withTime...); err != nil {
			return s.wrap("ack: tombstones", err)
		}
		del, padded := s.inStmt(ctx, tx, ackDelete, args)
		if _, err := del.ExecContext(ctx, padded...); err != nil {
			return s.wrap("ack", err)
		}
		return nil
	})
}

// markRouted marks the ids to mark among items routed, with one statement
// per idChunk ids.
func (s *Store) markRouted(ctx context.Context, tx *sql.Tx, items []write) error {
	return s.inChunks(len(items), func(i int) (string, bool) {
		return items[i].id, items[i].kind == markWrite
	}, func(args []any) error {
		n := len(args)
		stmt, args := s.inStmt(ctx, tx, markRoutedUpdate, args)
		if _, err := stmt.ExecContext(ctx, args...); err != nil {
			return s.wrap(fmt.Sprintf("mark %d routed", n), err)
		}
		return nil
	})
}

// inChunks calls run with the ids that id picks from the indexes 0 to n-1
// (those for which it returns true), idChunk at a time, in the writer's
// reusable argument buffer, which has room for idChunk ids (so run can pad
// them in place). It runs on the writer goroutine only.
func (s *Store) inChunks(n int, id func(i int) (string, bool), run func(args []any) error) error {
	if cap(s.idArgs) < idChunk {
		s.idArgs = make([]any, 0, idChunk)
	}
	args := s.idArgs[:0]
	defer func() {
		clear(args[:cap(args)]) // drop references to the ids
		s.idArgs = args[:0]
	}()
	for i := range n {
		v, ok := id(i)
		if !ok {
			continue
		}
		args = append(args, v)
		if len(args) == idChunk {
			if err := run(args); err != nil {
				return err
			}
			args = args[:0]
		}
	}
	if len(args) > 0 {
		return run(args)
	}
	return nil
}

// Pending returns up to limit (at most 500) of recipient's envelopes stored
// after cursor, in store order.
func (s *Store) Pending(ctx context.Context, recipient, cursor string, limit int) (store.Page, error) {
	return s.PendingWithin(ctx, recipient, cursor, limit, 0)
}

// PendingWithin returns up to limit (at most 500) of recipient's envelopes
// stored after cursor, in store order, ending before the envelope that
// would take their payload bytes past maxBytes (maxBytes <= 0: no bound);
// the first envelope is returned whatever its size. It reads the rows one
// at a time and stops at the first that does not fit, so it never holds
// more than the page and that one.
func (s *Store) PendingWithin(ctx context.Context, recipient, cursor string, limit, maxBytes int) (store.Page, error) {
	if s.closed.Load() {
		return store.Page{}, store.ErrClosed
	}
	after, err := store.DecodeCursor(cursor)
	if err != nil {
		return store.Page{}, fmt.Errorf("sqlite pending: %w", err)
	}
	limit = min(max(limit, 1), maxPage)
	rows, err := s.r.QueryContext(ctx, `SELECT seq, id, sender, type, payload, ephemeral, created_at
		FROM messages WHERE recipient = ? AND seq > ? ORDER BY seq LIMIT ?`, recipient, after, limit+1)
	if err != nil {
		return store.Page{}, s.wrap("pending", err)
	}
	defer rows.Close()
	page := store.Page{Envelopes: make([]*envelope.Envelope, 0, min(limit, 64))}
	var lastSeq int64
	bytes := 0
	for rows.Next() {
		if len(page.Envelopes) == limit {
			page.Next = store.EncodeCursor(lastSeq)
			break
		}
		e := &envelope.Envelope{Recipient: recipient}
		var seq, ms int64
		if err := rows.Scan(&seq, &e.ID, &e.Sender, &e.Type, &e.Payload, &e.Ephemeral, &ms); err != nil {
			return store.Page{}, s.wrap("pending: scan", err)
		}
		bytes += len(e.Payload)
		if maxBytes > 0 && bytes > maxBytes && len(page.Envelopes) > 0 {
			page.Next = store.EncodeCursor(lastSeq)
			break
		}
		lastSeq = seq
		if e.Payload == nil {
			e.Payload = []byte{}
		}
		e.CreatedAt = fromMillis(ms)
		page.Envelopes = append(page.Envelopes, e)
	}
	if err := rows.Err(); err != nil {
		return store.Page{}, s.wrap("pending", err)
	}
	return page, nil
}

// PendingCount returns recipient's number of stored envelopes, kept by
// the triggers of migration 0004.
func (s *Store) PendingCount(ctx context.Context, recipient string) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	var n int
	err := s.r.QueryRowContext(ctx, `SELECT pending FROM pending_counts WHERE recipient = ?`, recipient).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, s.wrap("pending count", err)
	}
	return n, nil
}

// SenderPending returns what sender has pending, from the counts kept by
// the triggers of migration 0006.
func (s *Store) SenderPending(ctx context.Context, sender string) (store.SenderCount, error) {
	if s.closed.Load() {
		return store.SenderCount{}, store.ErrClosed
	}
	var c store.SenderCount
	err := s.r.QueryRowContext(ctx, `SELECT pending, bytes FROM sender_counts WHERE sender = ?`, sender).Scan(&c.Messages, &c.Bytes)
	if errors.Is(err, sql.ErrNoRows) {
		return store.SenderCount{}, nil
	}
	if err != nil {
		return store.SenderCount{}, s.wrap("sender pending", err)
	}
	return c, nil
}

// PendingTotal implements store.PendingCounts.
func (s *Store) PendingTotal(ctx context.Context) (int64, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	var n int64
	if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(SUM(pending), 0) FROM pending_counts`).Scan(&n); err != nil {
		return 0, s.wrap("pending total", err)
	}
	return n, nil
}

// Unrouted returns up to limit envelopes not routed and created before
// before, in store order.
func (s *Store) Unrouted(ctx context.Context, before time.Time, limit int) ([]*envelope.Envelope, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	if limit <= 0 {
		return nil, nil
	}
	// The partial index holds only unrouted rows, in store order: the
	// planner picks it today, and INDEXED BY keeps it from ever trading it
	// for messages_created_at, which would walk every routed row too.
	rows, err := s.r.QueryContext(ctx, `SELECT id, sender, recipient, type, payload, ephemeral, created_at
		FROM messages INDEXED BY messages_unrouted
		WHERE routed = 0 AND created_at < ? ORDER BY seq LIMIT ?`, cutoffMillis(before), limit)
	if err != nil {
		return nil, s.wrap("unrouted", err)
	}
	defer rows.Close()
	var out []*envelope.Envelope
	for rows.Next() {
		e := &envelope.Envelope{}
		var ms int64
		if err := rows.Scan(&e.ID, &e.Sender, &e.Recipient, &e.Type, &e.Payload, &e.Ephemeral, &ms); err != nil {
			return nil, s.wrap("unrouted: scan", err)
		}
		if e.Payload == nil {
			e.Payload = []byte{}
		}
		e.CreatedAt = fromMillis(ms)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("unrouted", err)
	}
	return out, nil
}

// DeleteBefore deletes envelopes created before t, in short transactions
// of at most 5000 rows, and returns how many it deleted.
func (s *Store) DeleteBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "retention",
		`DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE created_at < ? LIMIT ?)`, t)
}

// DeleteTombstonesBefore deletes the tombstones of acks made before t, in
// short transactions of at most 5000 rows, and returns how many it deleted;
// then the count rows of recipients and of senders with nothing pending
// (the delete triggers leave them at zero).
func (s *Store) DeleteTombstonesBefore(ctx context.Context, t time.Time) (int, error) {
	n, err := s.deleteInChunks(ctx, "tombstone retention",
		`DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones WHERE acked_at < ? LIMIT ?)`, t)
	if err != nil {
		return n, err
	}
	if _, err := s.w.ExecContext(ctx, `DELETE FROM pending_counts WHERE pending <= 0`); err != nil {
		return n, s.wrap("pending count retention", err)
	}
	if _, err := s.w.ExecContext(ctx, `DELETE FROM sender_counts WHERE pending <= 0`); err != nil {
		return n, s.wrap("sender count retention", err)
	}
	return n, nil
}

// deleteInChunks runs query (with the cut-off and the chunk size as its
// arguments) until it deletes fewer rows than a chunk.
func (s *Store) deleteInChunks(ctx context.Context, op, query string, t time.Time) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	cut := cutoffMillis(t)
	total := 0
	for {
		res, err := s.w.ExecContext(ctx, query, cut, retentionChunk)
		if err != nil {
			return total, s.wrap(op, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, s.wrap(op, err)
		}
		total += int(n)
		if n < retentionChunk {
			return total, nil
		}
	}
}

// toMillis is the stored form of a time: Unix milliseconds (UTC by definition).
func toMillis(t time.Time) int64 { return t.UnixMilli() }

// fromMillis turns the stored form back into a UTC time.
func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// cutoffMillis is the smallest stored time that is not before t: a row is
// before t exactly when its stored milliseconds are below it.
func cutoffMillis(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// storedChunk bounds the ids one Stored query binds.
const storedChunk = 500

// Stored returns those of ids that are stored, looked up by id in chunks.
func (s *Store) Stored(ctx context.Context, ids []string) ([]string, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	var out []string
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), storedChunk)]
		ids = ids[len(chunk):]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		q := `SELECT id FROM messages WHERE id IN (?` + strings.Repeat(",?", len(chunk)-1) + `)`
		rows, err := s.r.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, s.wrap("stored", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, s.wrap("stored: scan", err)
			}
			out = append(out, id)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, s.wrap("stored", err)
		}
	}
	return out, nil
}
