package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/groupcommit"
)

const (
	// maxPage caps Pending's limit (the client contract's maximum).
	maxPage = 500
	// retentionChunk is the number of rows one DELETE of DeleteBefore takes,
	// so that retention never holds long transactions.
	retentionChunk = 5000
)

// insertMessagesSQL inserts a batch given as parallel arrays, not routed,
// in array order (so seq follows the order of the calls and of each call's
// slice), skipping ids already stored. $8 says of each envelope whether
// an ack of it records a tombstone (true for PutMessages, false for
// PutNew; see migration 0010).
const insertMessagesSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed, tombstone)
SELECT id, sender, recipient, type, payload, ephemeral, created_at, false, tombstone
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::boolean[], $7::timestamptz[], $8::boolean[])
	WITH ORDINALITY AS b(id, sender, recipient, type, payload, ephemeral, created_at, tombstone, ord)
ORDER BY ord
ON CONFLICT (id) DO NOTHING`

// insertClaimedSQL is insertMessagesSQL for a batch in which new messages
// claim idempotency records ($9: the key of the sender's record each
// claims, ” for none; no record is claimed twice in one batch). In one
// statement, it marks published each record claimed that was not
// (claimed), inserts the envelopes that claim nothing and those whose
// claim it took, in array order, and returns the positions (1-based) of
// the envelopes whose claim it took. Under READ COMMITTED, an UPDATE that
// meets a record another transaction is claiming waits for it and, once
// that one commits, finds the record published and leaves it: of two
// transactions claiming one record, exactly one stores.
const insertClaimedSQL = `WITH b AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::boolean[], $7::timestamptz[], $8::boolean[], $9::text[])
		WITH ORDINALITY AS u(id, sender, recipient, type, payload, ephemeral, created_at, tombstone, claim, ord)
), claimed AS (
	UPDATE idempotency i SET published = true FROM b
	WHERE b.claim <> '' AND i.sender = b.sender AND i.key = b.claim AND NOT i.published
	RETURNING b.ord
), stored AS (
	INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed, tombstone)
	SELECT id, sender, recipient, type, payload, ephemeral, created_at, false, tombstone
	FROM b WHERE b.claim = '' OR b.ord IN (SELECT ord FROM claimed)
	ORDER BY ord
	ON CONFLICT (id) DO NOTHING
)
SELECT ord FROM claimed`

// unstoreTombstonedSQL runs right after insertMessagesSQL (or
// insertClaimedSQL), in the same transaction, for the ids of the batch
// that must not be stored again once acknowledged (PutMessages' envelopes,
// and new messages with CheckTombstone; none in a batch of new messages
// only, which then has no tombstone lookup): it deletes again those whose
// id has a tombstone and returns their ids.
//
// Looking up before inserting would not do under READ COMMITTED: an
// insert that meets the row of an Ack still in progress waits for it and,
// once the Ack commits, inserts the id again although the lookup, made
// before, saw no tombstone. This statement takes a later snapshot, which
// holds the tombstone of any Ack that the insert could have waited for.
const unstoreTombstonedSQL = `WITH gone AS (SELECT id FROM tombstones WHERE id = ANY($1)),
unstored AS (DELETE FROM messages WHERE id IN (SELECT id FROM gone))
SELECT id FROM gone`

// markRoutedSQL marks the stored envelopes among ids routed. It leaves rows
// already routed alone, so that a repeated mark writes no new row version.
const markRoutedSQL = `UPDATE messages SET routed = true WHERE id = ANY($1) AND NOT routed`

// unroutedSQL reads the oldest envelopes not routed created before $1,
// through the partial index messages_unrouted (seq WHERE NOT routed).
const unroutedSQL = `SELECT id, sender, recipient, type, payload, ephemeral, created_at
FROM messages WHERE NOT routed AND created_at < $1 ORDER BY seq LIMIT $2`

// ackSQL deletes the envelopes among the (id, recipient) pairs given as
// parallel arrays ($1 ids, $2 recipients) and records a tombstone, stamped
// $3, of each that needs one (stored with tombstone = true) in the same
// statement (renewing one left by an earlier ack of the id), and returns
// the ids and recipients it deleted.
const ackSQL = `WITH deleted AS (
	DELETE FROM messages m USING unnest($1::text[], $2::text[]) AS a(id, recipient)
	WHERE m.id = a.id AND m.recipient = a.recipient
	RETURNING m.id, m.recipient, m.tombstone
), tombstoned AS (
	INSERT INTO tombstones (id, recipient, acked_at) SELECT id, recipient, $3 FROM deleted WHERE tombstone
	ON CONFLICT (id) DO UPDATE SET acked_at = EXCLUDED.acked_at
)
SELECT id, recipient FROM deleted`

// batchColumns are the statement arguments of one commit, reused between
// commits: the parallel arrays of the envelopes to insert (with, for
// each, whether its ack records a tombstone, the key it claims and the
// index of its item), the ids to look up in the tombstones, those of the
// (id, recipient) pairs to ack, and the ids to mark routed. A segment's
// puts, lookups and acks are contiguous ranges of them.
type batchColumns struct {
	ids, senders, recipients, types []string
	payloads                        [][]byte
	ephemerals                      []bool
	createdAts                      []time.Time
	tombstones                      []bool
	claims                          []string
	putItems                        []int
	checked                         []string
	ackIDs, ackRecipients           []string
	routed                          []string
	segments                        []segment
}

func (c *batchColumns) reset() {
	clear(c.ids) // drop references to callers' strings
	clear(c.senders)
	clear(c.recipients)
	clear(c.types)
	clear(c.claims)
	clear(c.checked)
	clear(c.ackIDs)
	clear(c.ackRecipients)
	clear(c.routed)
	c.ids, c.senders, c.recipients, c.types = c.ids[:0], c.senders[:0], c.recipients[:0], c.types[:0]
	clear(c.payloads) // drop references to callers' payloads
	c.payloads, c.ephemerals, c.createdAts = c.payloads[:0], c.ephemerals[:0], c.createdAts[:0]
	c.tombstones, c.claims, c.putItems, c.checked = c.tombstones[:0], c.claims[:0], c.putItems[:0], c.checked[:0]
	c.ackIDs, c.ackRecipients = c.ackIDs[:0], c.ackRecipients[:0]
	c.routed = c.routed[:0]
	c.segments = c.segments[:0]
}

// add appends item i's envelope to the arguments of the inserts.
func (c *batchColumns) add(i int, w groupcommit.Item) {
	e := w.Env
	payload := e.Payload
	if payload == nil {
		payload = []byte{}
	}
	c.ids = append(c.ids, e.ID)
	c.senders = append(c.senders, e.Sender)
	c.recipients = append(c.recipients, e.Recipient)
	c.types = append(c.types, e.Type)
	c.payloads = append(c.payloads, payload)
	c.ephemerals = append(c.ephemerals, e.Ephemeral)
	c.createdAts = append(c.createdAts, storedTime(e.CreatedAt))
	c.tombstones = append(c.tombstones, w.Kind == groupcommit.PutItem)
	c.claims = append(c.claims, w.Key)
	c.putItems = append(c.putItems, i)
	if w.ChecksTombstone() {
		c.checked = append(c.checked, e.ID)
	}
}

// segment is a run items[start:end] of a batch that commit writes as all
// its puts, in order, then all its acks, in order: that has the effect of
// the order of items because no put in it stores an id that an ack before
// it in the run acknowledges (the only put and ack that do not commute).
// Its puts are columns [p0:p1] of batchColumns' envelope arrays, the ids
// they look up in the tombstones [c0:c1] of its checked ids, its acks
// [a0:a1] of the ack arrays; claims says whether a put claims a record.
type segment struct {
	start, end int
	p0, p1     int
	c0, c1     int
	a0, a1     int
	claims     bool
}

// split fills c from items: their arguments, and their segments, each the
// longest run that starts where the one before ends. In the common batch
// (no put of an id acknowledged earlier in the batch) there is one. Of
// new messages claiming the same record, only the first is written (claims
// holds the records claimed in the batch): the others cannot take the
// claim, and their results stay false.
func (c *batchColumns) split(items []groupcommit.Item, segAcks, claims map[string]struct{}) {
	seg := segment{}
	for i, w := range items {
		switch w.Kind {
		case groupcommit.PutItem, groupcommit.NewItem:
			if w.Key != "" {
				claim := w.Env.Sender + "\x00" + w.Key
				if _, ok := claims[claim]; ok {
					continue
				}
				claims[claim] = struct{}{}
			}
			if _, ok := segAcks[w.Env.ID]; ok {
				seg.end, seg.p1, seg.c1, seg.a1 = i, len(c.ids), len(c.checked), len(c.ackIDs)
				c.segments = append(c.segments, seg)
				seg = segment{start: i, p0: len(c.ids), c0: len(c.checked), a0: len(c.ackIDs)}
				clear(segAcks)
			}
			seg.claims = seg.claims || w.Key != ""
			c.add(i, w)
		case groupcommit.AckItem:
			segAcks[w.ID] = struct{}{}
			c.ackIDs = append(c.ackIDs, w.ID)
			c.ackRecipients = append(c.ackRecipients, w.Recipient)
		case groupcommit.MarkItem:
			c.routed = append(c.routed, w.ID)
		}
	}
	clear(segAcks)
	clear(claims)
	seg.end, seg.p1, seg.c1, seg.a1 = len(items), len(c.ids), len(c.checked), len(c.ackIDs)
	c.segments = append(c.segments, seg)
}

// commit writes items as one implicit transaction, in one round trip,
// with the effect of running the puts and acks one at a time in the order
// of items, and the routed marks last (so that an id stored and marked in
// the same batch ends up routed). For each segment (see split) it stores
// the envelopes (insertMessagesSQL, or insertClaimedSQL when new messages
// in it claim idempotency records), unstores those that must not be stored
// again once acknowledged and have a tombstone (unstoreTombstonedSQL, only
// when the segment has such envelopes), marking the results of the puts,
// then deletes what the acks acknowledge (ackSQL), marking in results the
// ack items that deleted an envelope; then it marks the ids to mark routed
// (markRoutedSQL). It is the group-commit writer's CommitFunc: it runs on
// the writer goroutine only.
func (s *Store) commit(items []groupcommit.Item, results []bool) error {
	s.groupCommits.Add(1)
	cols := &s.cols
	cols.reset()
	defer cols.reset()
	if s.segAcks == nil {
		s.segAcks = make(map[string]struct{})
		s.claims = make(map[string]struct{})
	}
	cols.split(items, s.segAcks, s.claims)
	// The batch belongs to several callers: no single caller's context may
	// abort it.
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	ackedAt := storedTime(time.Now())
	err := retryAborted(func() error {
		clear(results)
		b := &pgx.Batch{}
		for _, seg := range cols.segments {
			if seg.p1 > seg.p0 {
				p0, p1 := seg.p0, seg.p1
				if seg.claims {
					b.Queue(insertClaimedSQL, cols.ids[p0:p1], cols.senders[p0:p1], cols.recipients[p0:p1], cols.types[p0:p1],
						cols.payloads[p0:p1], cols.ephemerals[p0:p1], cols.createdAts[p0:p1], cols.tombstones[p0:p1], cols.claims[p0:p1])
				} else {
					b.Queue(insertMessagesSQL, cols.ids[p0:p1], cols.senders[p0:p1], cols.recipients[p0:p1], cols.types[p0:p1],
						cols.payloads[p0:p1], cols.ephemerals[p0:p1], cols.createdAts[p0:p1], cols.tombstones[p0:p1])
				}
			}
			if seg.c1 > seg.c0 {
				b.Queue(unstoreTombstonedSQL, cols.checked[seg.c0:seg.c1])
			}
			if seg.a1 > seg.a0 {
				b.Queue(ackSQL, cols.ackIDs[seg.a0:seg.a1], cols.ackRecipients[seg.a0:seg.a1], ackedAt)
			}
		}
		if len(cols.routed) > 0 {
			b.Queue(markRoutedSQL, cols.routed)
		}
		return s.sendWrite(ctx, b, items, results)
	})
	if err != nil {
		return s.wrap(fmt.Sprintf("write %d envelopes, %d acks, %d routed marks",
			len(cols.ids), len(cols.ackIDs), len(cols.routed)), err)
	}
	return nil
}

// writeAttempts bounds how often a group commit runs when the server
// aborts it as a deadlock's victim.
const writeAttempts = 3

// retryAborted runs write, and again (up to writeAttempts in all) while it
// fails because the server aborted its transaction to break a deadlock or
// a serialization conflict: nothing of it was committed then. Instances
// sharing the database lock count rows (recipients', senders') in several
// statements of one transaction, in an order no single statement can fix,
// so two instances' commits may deadlock now and then.
func retryAborted(write func() error) error {
	var err error
	for range writeAttempts {
		err = write()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != deadlockDetected && pgErr.Code != serializationFailure) {
			return err
		}
	}
	return err
}

// SQLSTATEs of a transaction the server aborted, which may be run again.
const (
	deadlockDetected     = "40P01"
	serializationFailure = "40001"
)

// sendWrite runs the batch queued by commit and reads its results into
// results.
func (s *Store) sendWrite(ctx context.Context, b *pgx.Batch, items []groupcommit.Item, results []bool) error {
	cols := &s.cols
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	for _, seg := range cols.segments {
		segItems, segResults := items[seg.start:seg.end], results[seg.start:seg.end]
		if seg.p1 > seg.p0 {
			if err := readInsert(br, seg, cols, items, results); err != nil {
				return err
			}
		}
		if seg.c1 > seg.c0 {
			gone, err := readUnstored(br)
			if err != nil {
				return err
			}
			for _, i := range cols.putItems[seg.p0:seg.p1] {
				if w := items[i]; w.ChecksTombstone() {
					if _, ok := gone[w.Env.ID]; ok {
						// A put's result is true (acknowledged before), a new
						// message's false (not stored).
						results[i] = w.Kind == groupcommit.PutItem
					}
				}
			}
		}
		if seg.a1 > seg.a0 {
			if err := readAck(br, segItems, segResults); err != nil {
				return err
			}
		}
	}
	if len(cols.routed) > 0 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	// Close reports an error of the implicit transaction's commit.
	return br.Close()
}

// readInsert reads the result of a segment's insert (insertMessagesSQL or
// insertClaimedSQL) and marks in results the new messages stored: those
// without a claim, and those whose claim the insert took.
func readInsert(br pgx.BatchResults, seg segment, cols *batchColumns, items []groupcommit.Item, results []bool) error {
	for j, i := range cols.putItems[seg.p0:seg.p1] {
		if items[i].Kind == groupcommit.NewItem && cols.claims[seg.p0+j] == "" {
			results[i] = true
		}
	}
	if !seg.claims {
		_, err := br.Exec()
		return err
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var ord int64
		if err := rows.Scan(&ord); err != nil {
			return err
		}
		j := seg.p0 + int(ord) - 1
		if ord < 1 || j >= seg.p1 {
			return fmt.Errorf("claimed position %d out of the batch", ord)
		}
		results[cols.putItems[j]] = true
	}
	rows.Close()
	return rows.Err()
}

// readUnstored reads the result of unstoreTombstonedSQL: the ids with a
// tombstone (nil when none has).
func readUnstored(br pgx.BatchResults) (map[string]struct{}, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var gone map[string]struct{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		if gone == nil {
			gone = make(map[string]struct{})
		}
		gone[id] = struct{}{}
	}
	rows.Close()
	return gone, rows.Err()
}

// readAck reads the result of ackSQL, the ids it deleted and their
// recipients, and marks in deleted the ack items among items that deleted
// one: the first, in order, of the items that ack a deleted id for its
// recipient (so an id acked twice counts once).
func readAck(br pgx.BatchResults, items []groupcommit.Item, deleted []bool) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	var owners map[string]string
	for rows.Next() {
		var id, recipient string
		if err := rows.Scan(&id, &recipient); err != nil {
			return err
		}
		if owners == nil {
			owners = make(map[string]string)
		}
		owners[id] = recipient
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for i, w := range items {
		if w.Kind != groupcommit.AckItem {
			continue
		}
		if r, ok := owners[w.ID]; ok && r == w.Recipient {
			deleted[i] = true
			delete(owners, w.ID) // a later ack of the same id deleted nothing
		}
	}
	return nil
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
	rows, err := s.pool.Query(ctx, unroutedSQL, cutoff(before), limit)
	if err != nil {
		return nil, s.wrap("unrouted", err)
	}
	defer rows.Close()
	var out []*envelope.Envelope
	for rows.Next() {
		e := &envelope.Envelope{}
		if err := rows.Scan(&e.ID, &e.Sender, &e.Recipient, &e.Type, &e.Payload, &e.Ephemeral, &e.CreatedAt); err != nil {
			return nil, s.wrap("unrouted: scan", err)
		}
		if e.Payload == nil {
			e.Payload = []byte{}
		}
		e.CreatedAt = e.CreatedAt.UTC()
		out = append(out, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, s.wrap("unrouted", err)
	}
	return out, nil
}

// PendingCount returns recipient's number of stored envelopes, kept by
// the triggers of migration 0004.
func (s *Store) PendingCount(ctx context.Context, recipient string) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT pending FROM pending_counts WHERE recipient = $1`, recipient).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, s.wrap("pending count", err)
	}
	return int(n), nil
}

// SenderPending returns what sender has pending, from the counts kept by
// the triggers of migration 0007.
func (s *Store) SenderPending(ctx context.Context, sender string) (store.SenderCount, error) {
	if s.closed.Load() {
		return store.SenderCount{}, store.ErrClosed
	}
	var n, b int64
	err := s.pool.QueryRow(ctx, `SELECT pending, bytes FROM sender_counts WHERE sender = $1`, sender).Scan(&n, &b)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.SenderCount{}, nil
	}
	if err != nil {
		return store.SenderCount{}, s.wrap("sender pending", err)
	}
	return store.SenderCount{Messages: int(n), Bytes: b}, nil
}

// PendingTotal implements store.PendingCounts.
func (s *Store) PendingTotal(ctx context.Context) (int64, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT COALESCE(SUM(pending), 0)::bigint FROM pending_counts`).Scan(&n); err != nil {
		return 0, s.wrap("pending total", err)
	}
	return n, nil
}

// pendingSQL reads the page of recipient $1 after seq $2: up to $3 rows
// and the row after them, which tells whether there is a next page.
const pendingSQL = `SELECT seq, id, sender, type, payload, ephemeral, created_at, true
FROM messages WHERE recipient = $1 AND seq > $2 ORDER BY seq LIMIT $3 + 1`

// pendingWithinSQL is pendingSQL with a bound of $4 payload bytes: the
// last column says whether a row is on the page (among the first $3 rows,
// and the first row or within $4 bytes with the rows before it), and the
// payload of a row that is not is left out, so that the rows after the
// page cost their metadata only. octet_length of a stored payload reads
// its size, not its bytes; rows that fit are a prefix of the rows.
const pendingWithinSQL = `SELECT seq, id, sender, type, CASE WHEN fits THEN payload END, ephemeral, created_at, fits
FROM (
	SELECT seq, id, sender, type, payload, ephemeral, created_at,
		row_number() OVER w <= $3 AND (row_number() OVER w = 1 OR sum(octet_length(payload)) OVER w <= $4) AS fits
	FROM (SELECT seq, id, sender, type, payload, ephemeral, created_at FROM messages
		WHERE recipient = $1 AND seq > $2 ORDER BY seq LIMIT $3 + 1) AS m
	WINDOW w AS (ORDER BY seq ROWS UNBOUNDED PRECEDING)
) AS p
ORDER BY seq`

// Pending returns up to limit (at most 500) of recipient's envelopes stored
// after cursor, in store order.
func (s *Store) Pending(ctx context.Context, recipient, cursor string, limit int) (store.Page, error) {
	return s.PendingWithin(ctx, recipient, cursor, limit, 0)
}

// PendingWithin returns up to limit (at most 500) of recipient's envelopes
// stored after cursor, in store order, ending before the envelope that
// would take their payload bytes past maxBytes (maxBytes <= 0: no bound);
// the first envelope is returned whatever its size. The server leaves out
// the payloads past the bound (pendingWithinSQL).
func (s *Store) PendingWithin(ctx context.Context, recipient, cursor string, limit, maxBytes int) (store.Page, error) {
	if s.closed.Load() {
		return store.Page{}, store.ErrClosed
	}
	after, err := store.DecodeCursor(cursor)
	if err != nil {
		return store.Page{}, fmt.Errorf("postgres pending: %w", err)
	}
	limit = min(max(limit, 1), maxPage)
	var rows pgx.Rows
	if maxBytes > 0 {
		rows, err = s.pool.Query(ctx, pendingWithinSQL, recipient, after, limit, int64(maxBytes))
	} else {
		rows, err = s.pool.Query(ctx, pendingSQL, recipient, after, limit)
	}
	if err != nil {
		return store.Page{}, s.wrap("pending", err)
	}
	defer rows.Close()
	page := store.Page{Envelopes: make([]*envelope.Envelope, 0, min(limit, 64))}
	var lastSeq int64
	for rows.Next() {
		if len(page.Envelopes) == limit {
			page.Next = store.EncodeCursor(lastSeq)
			break
		}
		e := &envelope.Envelope{Recipient: recipient}
		var seq int64
		var fits bool
		if err := rows.Scan(&seq, &e.ID, &e.Sender, &e.Type, &e.Payload, &e.Ephemeral, &e.CreatedAt, &fits); err != nil {
			return store.Page{}, s.wrap("pending: scan", err)
		}
		if !fits {
			page.Next = store.EncodeCursor(lastSeq)
			break
		}
		lastSeq = seq
		if e.Payload == nil {
			e.Payload = []byte{}
		}
		e.CreatedAt = e.CreatedAt.UTC()
		page.Envelopes = append(page.Envelopes, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return store.Page{}, s.wrap("pending", err)
	}
	return page, nil
}

// DeleteBefore deletes envelopes created before t, in statements of at most
// 5000 rows, and returns how many it deleted.
func (s *Store) DeleteBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "retention",
		`DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE created_at < $1 LIMIT $2)`, t)
}

// DeleteTombstonesBefore deletes the tombstones of acks made before t, in
// statements of at most 5000 rows, and returns how many it deleted; then
// the count rows of recipients and of senders with nothing pending.
func (s *Store) DeleteTombstonesBefore(ctx context.Context, t time.Time) (int, error) {
	n, err := s.deleteInChunks(ctx, "tombstone retention",
		`DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones WHERE acked_at < $1 LIMIT $2)`, t)
	if err != nil {
		return n, err
	}
	// The count rows of recipients with nothing pending (the ack trigger
	// leaves them at zero; a send racing this delete waits for its row
	// lock and inserts the row again).
	if _, err := s.pool.Exec(ctx, `DELETE FROM pending_counts WHERE pending <= 0`); err != nil {
		return n, s.wrap("pending count retention", err)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM sender_counts WHERE pending <= 0`); err != nil {
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
	total := 0
	for {
		tag, err := s.pool.Exec(ctx, query, t, retentionChunk)
		if err != nil {
			return total, s.wrap(op, err)
		}
		n := int(tag.RowsAffected())
		total += n
		if n < retentionChunk {
			return total, nil
		}
	}
}

// storedTime is the stored form of a time: UTC, whole milliseconds.
func storedTime(t time.Time) time.Time { return t.UTC().Truncate(time.Millisecond) }

// cutoff is the smallest stored time that is not before t: a row is before
// t exactly when its stored time is before it. (PostgreSQL keeps
// microseconds, so t itself would be truncated, and a row at t's
// millisecond would not be before a t a few nanoseconds later.)
func cutoff(t time.Time) time.Time {
	c := storedTime(t)
	if c.Before(t) {
		c = c.Add(time.Millisecond)
	}
	return c
}

// Stored returns those of ids that are stored, looked up by id.
func (s *Store) Stored(ctx context.Context, ids []string) ([]string, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT id FROM messages WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, s.wrap("stored", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.wrap("stored", err)
	}
	return out, nil
}
