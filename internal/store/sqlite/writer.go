package sqlite

import (
	"context"
	"database/sql/driver"
	"fmt"
	"time"

	"github.com/go-routing-service/routingservice/internal/store/groupcommit"
)

// The writer's fixed statements.
const (
	// insertSQL stores one envelope unless its id is stored. routed is 0
	// for every message (see migration 0009: what is routed is the
	// ledger's business and the watermark's). The last argument says
	// whether an ack of it records a tombstone (1 for PutMessages, 0 for
	// PutNew; see migration 0008).
	insertSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed, tombstone)
VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING`
	// claimSQL claims the idempotency record of a new message (sender,
	// key): it marks it published, and changes a row only where it was
	// not.
	claimSQL = `UPDATE idempotency SET published = 1 WHERE sender = ? AND key = ? AND published = 0`
	// tombstoneSQL records the tombstone of one envelope an ack deleted. A
	// tombstone left by an earlier ack of the same id (possible only once
	// the sweep removed it and the id was stored again) is renewed.
	tombstoneSQL = `INSERT INTO tombstones (id, recipient, acked_at) VALUES (?, ?, ?)
ON CONFLICT (id) DO UPDATE SET acked_at = excluded.acked_at`
	// setWatermarkSQL writes the routed watermark (see migration 0009).
	setWatermarkSQL = `UPDATE routed_watermark SET seq = ? WHERE id = 1`
)

// onWriteConn runs f on the write connection, which it holds meanwhile
// (the idempotency and target writes, which use it through database/sql,
// wait).
func (s *Store) onWriteConn(ctx context.Context, f func(c *wconn) error) error {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return s.wrap("write: connection", err)
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		s.wc.use(dc.(driver.Conn))
		return f(&s.wc)
	})
}

// commit writes items in one transaction, with the effect of running the
// puts and acks one at a time in the order of items, and the routed marks
// last (so that an id stored and marked in the same batch ends up routed).
// It takes items in segments (see segment): each segment's puts, then
// its acks. It is the group-commit writer's CommitFunc: it runs on the
// writer goroutine only. The transaction is immediate (it takes the
// database's write lock at BEGIN).
//
// The transaction also moves the routed watermark where the batch moves
// it; once it committed, the ledger takes what it stored and deleted, and
// the marks. A batch of marks alone writes nothing unless the watermark
// moves.
func (s *Store) commit(items []groupcommit.Item, results []bool) error {
	s.groupCommits.Add(1)
	// The batch belongs to several callers: no single caller's context may
	// abort it. busy_timeout bounds how long it can wait for a lock.
	ctx := context.Background()
	marks := s.marks[:0]
	defer func() {
		clear(marks) // drop references to the ids
		s.marks = marks[:0]
	}()
	writes := 0
	for _, w := range items {
		if w.Kind == groupcommit.MarkItem {
			marks = append(marks, w.ID)
		} else {
			writes++
		}
	}
	if writes == 0 {
		return s.markRouted(ctx, marks)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	defer func() {
		clear(s.changes) // drop references to the ids and URNs
		s.changes = s.changes[:0]
	}()
	var watermark int64
	err := s.onWriteConn(ctx, func(c *wconn) error {
		if err := c.begin(ctx); err != nil {
			return s.wrap("write: begin", err)
		}
		var err error
		if watermark, err = s.write(ctx, c, items, results, marks); err == nil {
			if err = c.commit(ctx); err != nil {
				err = s.wrap("write: commit", err)
			}
		}
		if err != nil {
			c.rollback(ctx)
		}
		return err
	})
	if err != nil {
		return err
	}
	s.watermark = max(s.watermark, watermark)
	s.ledger.apply(s.changes, marks)
	return nil
}

// write makes the writes of items in the open transaction and returns the
// watermark it wrote (see commit).
func (s *Store) write(ctx context.Context, c *wconn, items []groupcommit.Item, results []bool, marks []string) (int64, error) {
	var ackedAt int64
	for start := 0; start < len(items); {
		seg := s.segment(items, start)
		end := seg.end
		if seg.puts > 0 {
			if err := s.put(ctx, c, items[start:end], results[start:end]); err != nil {
				return 0, err
			}
		}
		if seg.acks > 0 {
			if ackedAt == 0 {
				ackedAt = toMillis(time.Now())
			}
			if err := s.ack(ctx, c, items[start:end], results[start:end], ackedAt); err != nil {
				return 0, err
			}
		}
		start = end
	}
	watermark := s.ledger.watermark(s.changes, marks)
	if watermark > s.watermark {
		c.bind(watermark)
		if _, err := c.execSQL(ctx, setWatermarkSQL); err != nil {
			return 0, s.wrap("write: routed watermark", err)
		}
	}
	return watermark, nil
}

// markRouted applies a batch of marks alone to the ledger, and writes the
// watermark in a transaction of its own if they move it.
func (s *Store) markRouted(ctx context.Context, marks []string) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.ledger.apply(nil, marks)
	watermark := s.ledger.watermark(nil, nil)
	if watermark <= s.watermark {
		return nil
	}
	err := s.onWriteConn(ctx, func(c *wconn) error {
		c.bind(watermark)
		_, err := c.execSQL(ctx, setWatermarkSQL)
		return err
	})
	if err != nil {
		return s.wrap(fmt.Sprintf("mark %d routed: routed watermark", len(marks)), err)
	}
	s.watermark = watermark
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
func (s *Store) segment(items []groupcommit.Item, start int) segment {
	seg := segment{end: len(items)}
	clear(s.segAcks)
	for i := start; i < len(items); i++ {
		switch w := items[i]; w.Kind {
		case groupcommit.PutItem, groupcommit.NewItem:
			if _, ok := s.segAcks[w.Env.ID]; ok {
				seg.end = i
				return seg
			}
			seg.puts++
		case groupcommit.AckItem:
			if s.segAcks == nil {
				s.segAcks = make(map[string]struct{})
			}
			s.segAcks[w.ID] = struct{}{}
			seg.acks++
		case groupcommit.MarkItem:
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
// Each row stored is added to s.changes.
func (s *Store) put(ctx context.Context, c *wconn, items []groupcommit.Item, results []bool) error {
	gone, err := s.tombstoned(ctx, c, items)
	if err != nil {
		return err
	}
	insert, err := c.stmt(ctx, insertSQL)
	if err != nil {
		return s.wrap("put", err)
	}
	for i, w := range items {
		tombstone := true
		switch w.Kind {
		case groupcommit.PutItem:
			if _, ok := gone[w.Env.ID]; ok {
				results[i] = true // acknowledged before
				continue
			}
		case groupcommit.NewItem:
			if w.Key != "" {
				c.bind(w.Env.Sender, w.Key)
				res, err := c.execSQL(ctx, claimSQL)
				if err != nil {
					return s.wrap("put new "+w.Env.ID+": claim", err)
				}
				if n, err := res.RowsAffected(); err != nil {
					return s.wrap("put new "+w.Env.ID+": claim", err)
				} else if n == 0 {
					continue // claimed by another put, or no record: not stored
				}
			}
			if _, ok := gone[w.Env.ID]; ok && w.Check {
				continue // stored and acknowledged before: its claim is taken, nothing stored
			}
			results[i] = true
			tombstone = false
		default:
			continue
		}
		e := w.Env
		payload := e.Payload
		if payload == nil {
			payload = []byte{}
		}
		created := toMillis(e.CreatedAt)
		c.bind(e.ID, e.Sender, e.Recipient, e.Type, payload, e.Ephemeral, created, tombstone)
		res, err := c.exec(ctx, insert)
		if err != nil {
			return s.wrap("put "+e.ID, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return s.wrap("put "+e.ID, err)
		} else if n == 0 {
			continue // stored before: left as it is
		}
		seq, err := res.LastInsertId()
		if err != nil {
			return s.wrap("put "+e.ID, err)
		}
		s.changes = append(s.changes, change{tombstone: tombstone, seq: seq, created: created, id: e.ID,
			recipient: e.Recipient, sender: e.Sender, bytes: int64(len(payload))})
	}
	return nil
}

// tombstoned returns the ids of the envelopes among items that need a
// tombstone lookup (ChecksTombstone) and have a tombstone (nil when none
// has), looked up with one statement per idChunk ids.
func (s *Store) tombstoned(ctx context.Context, c *wconn, items []groupcommit.Item) (map[string]struct{}, error) {
	var gone map[string]struct{}
	err := s.inChunks(c, len(items), func(i int) (driver.Value, bool) {
		w := items[i]
		if !w.ChecksTombstone() {
			return nil, false
		}
		return w.Env.ID, true
	}, func(n int) error {
		st, err := c.inStmt(ctx, tombstoneLookup, n)
		if err != nil {
			return s.wrap("put: tombstone lookup", err)
		}
		err = c.query(ctx, st, func(v []driver.Value) error {
			id, ok := v[0].(string)
			if !ok {
				return fmt.Errorf("id of type %T", v[0])
			}
			if gone == nil {
				gone = make(map[string]struct{})
			}
			gone[id] = struct{}{}
			return nil
		})
		if err != nil {
			return s.wrap("put: tombstone lookup", err)
		}
		return nil
	})
	return gone, err
}

// ackRow is what an ack needs of a stored envelope: what its lookup
// reads, or what the ledger holds of a message not routed.
type ackRow struct {
	recipient string
	sender    string
	seq       int64
	bytes     int64 // payload length
	tombstone bool  // its ack records a tombstone (see migration 0008)
}

// scanAckRow reads a row of ackLookup.
func scanAckRow(v []driver.Value) (string, ackRow, error) {
	id, ok1 := v[0].(string)
	recipient, ok2 := v[1].(string)
	seq, ok3 := v[2].(int64)
	sender, ok4 := v[3].(string)
	bytes, ok5 := v[4].(int64)
	tombstone, ok6 := v[5].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 {
		return "", ackRow{}, fmt.Errorf("unexpected row %v", v)
	}
	return id, ackRow{recipient: recipient, sender: sender, seq: seq, bytes: bytes, tombstone: tombstone != 0}, nil
}

// ack deletes the envelopes that the acks among items acknowledge, with a
// tombstone stamped ackedAt of each that needs one (stored with tombstone
// = 1), and marks in deleted the ack items that deleted one: the first,
// in order, of the items that ack a stored id for its recipient (so an id
// acked twice counts once, and an id acked by someone else not at all).
// What it needs of the ids acked it takes from the ledger for the
// messages not routed (most acks: a message delivered live is acked
// before its routed mark), unless this commit stored or deleted the id
// already, and looks the others up with one statement per idChunk ids;
// it deletes the rows (by seq) with one statement per idChunk of them,
// and records each tombstone with a statement of its own (none for the
// messages PutNew stored). Each row deleted is added to s.changes.
func (s *Store) ack(ctx context.Context, c *wconn, items []groupcommit.Item, deleted []bool, ackedAt int64) error {
	if s.owners == nil {
		s.owners = make(map[string]ackRow)
	}
	owners := s.owners
	defer clear(owners)
	// The ids this commit stored or deleted so far: the ledger does not
	// have them as they are now.
	if s.touched == nil {
		s.touched = make(map[string]struct{})
	}
	touched := s.touched
	defer clear(touched)
	for _, ch := range s.changes {
		touched[ch.id] = struct{}{}
	}
	s.ledger.acked(len(items), func(i int) (string, bool) {
		w := items[i]
		if w.Kind != groupcommit.AckItem {
			return "", false
		}
		_, t := touched[w.ID]
		return w.ID, !t
	}, func(i int, r ackRow) {
		owners[items[i].ID] = r
	})
	err := s.inChunks(c, len(items), func(i int) (driver.Value, bool) {
		w := items[i]
		if w.Kind != groupcommit.AckItem {
			return nil, false
		}
		if _, ok := owners[w.ID]; ok {
			return nil, false
		}
		return w.ID, true
	}, func(n int) error {
		st, err := c.inStmt(ctx, ackLookup, n)
		if err != nil {
			return s.wrap("ack: lookup", err)
		}
		err = c.query(ctx, st, func(v []driver.Value) error {
			id, r, err := scanAckRow(v)
			if err != nil {
				return err
			}
			owners[id] = r
			return nil
		})
		if err != nil {
			return s.wrap("ack: lookup", err)
		}
		return nil
	})
	if err != nil || len(owners) == 0 {
		return err
	}
	first := len(s.changes)
	for i, w := range items {
		if w.Kind != groupcommit.AckItem {
			continue
		}
		r, ok := owners[w.ID]
		if !ok || r.recipient != w.Recipient {
			continue
		}
		deleted[i] = true
		delete(owners, w.ID) // a later ack of the same id deletes nothing
		s.changes = append(s.changes, change{deleted: true, seq: r.seq, id: w.ID,
			recipient: r.recipient, sender: r.sender, bytes: r.bytes})
		if r.tombstone {
			c.bind(w.ID, r.recipient, ackedAt)
			if _, err := c.execSQL(ctx, tombstoneSQL); err != nil {
				return s.wrap("ack: tombstone", err)
			}
		}
	}
	gone := s.changes[first:]
	return s.inChunks(c, len(gone), func(i int) (driver.Value, bool) {
		return gone[i].seq, true
	}, func(n int) error {
		st, err := c.inStmt(ctx, ackDelete, n)
		if err != nil {
			return s.wrap("ack", err)
		}
		if _, err := c.exec(ctx, st); err != nil {
			return s.wrap("ack", err)
		}
		return nil
	})
}

// inChunks binds on c the ids (or seqs) that id picks from the indexes 0
// to n-1 (those for which it returns true), idChunk at a time, and calls
// run with the number bound, for it to run a statement with them.
func (s *Store) inChunks(c *wconn, n int, id func(i int) (driver.Value, bool), run func(n int) error) error {
	defer c.unbind()
	bound := 0
	for i := range n {
		v, ok := id(i)
		if !ok {
			continue
		}
		c.bind(v)
		bound++
		if bound == idChunk {
			if err := run(bound); err != nil {
				return err
			}
			bound = 0
		}
	}
	if bound > 0 {
		return run(bound)
	}
	return nil
}
