package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
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
// slice), skipping ids already stored.
const insertMessagesSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at, routed)
SELECT id, sender, recipient, type, payload, ephemeral, created_at, false
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::boolean[], $7::timestamptz[])
	WITH ORDINALITY AS b(id, sender, recipient, type, payload, ephemeral, created_at, ord)
ORDER BY ord
ON CONFLICT (id) DO NOTHING`

// unstoreTombstonedSQL runs right after insertMessagesSQL, in the same
// transaction: it deletes again the envelopes of the batch whose id has a
// tombstone and returns those ids. It is the batch's one tombstone lookup.
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

// ackSQL deletes recipient's envelopes among ids and records a tombstone of
// each in the same statement (renewing one left by an earlier ack of the
// id), and returns how many it deleted.
const ackSQL = `WITH deleted AS (
	DELETE FROM messages WHERE recipient = $1 AND id = ANY($2) RETURNING id, recipient
), tombstoned AS (
	INSERT INTO tombstones (id, recipient, acked_at) SELECT id, recipient, $3 FROM deleted
	ON CONFLICT (id) DO UPDATE SET acked_at = EXCLUDED.acked_at
)
SELECT count(*) FROM deleted`

// write is one item of the group-commit writer: an envelope that
// PutMessages stores or, when env is nil, the id of an envelope that
// MarkRouted marks routed.
type write struct {
	env    *envelope.Envelope
	routed string
}

// PutMessages stores envs, not routed, idempotently on id, in the order
// given, except those whose id has a tombstone (acked[i] true; see
// store.Messages). It returns once the transaction holding them committed,
// or with ctx's error if ctx ends first, in which case they may or may not
// have been stored.
func (s *Store) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	if len(envs) == 0 {
		return nil, nil
	}
	items := make([]write, len(envs))
	for i, e := range envs {
		if e == nil || e.ID == "" {
			return nil, fmt.Errorf("postgres put: envelope %d has no id", i)
		}
		items[i].env = e
	}
	acked := make([]bool, len(envs))
	err := s.writer.Submit(ctx, items, acked)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr { // Submit returns ctx.Err() itself
		return nil, fmt.Errorf("postgres put: %w", err)
	}
	if err != nil || !slices.Contains(acked, true) {
		return nil, err
	}
	return acked, nil
}

// MarkRouted marks the stored envelopes with these ids routed, ignoring
// ids not stored. The group-commit writer commits the marks together with
// the PutMessages and MarkRouted calls waiting at the same time; it returns
// once they are committed, or with ctx's error if ctx ends first, in which
// case they may or may not be.
func (s *Store) MarkRouted(ctx context.Context, ids []string) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if len(ids) == 0 {
		return nil
	}
	items := make([]write, len(ids))
	for i, id := range ids {
		items[i].routed = id
	}
	err := s.writer.Submit(ctx, items, nil)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr { // Submit returns ctx.Err() itself
		return fmt.Errorf("postgres mark routed: %w", err)
	}
	return err
}

// batchColumns are the parallel arrays of one insert, and the ids of one
// routed mark, reused between batches.
type batchColumns struct {
	ids, senders, recipients, types []string
	payloads                        [][]byte
	ephemerals                      []bool
	createdAts                      []time.Time
	routed                          []string
}

func (c *batchColumns) reset() {
	clear(c.ids) // drop references to callers' strings
	clear(c.senders)
	clear(c.recipients)
	clear(c.types)
	clear(c.routed)
	c.ids, c.senders, c.recipients, c.types = c.ids[:0], c.senders[:0], c.recipients[:0], c.types[:0]
	clear(c.payloads) // drop references to callers' payloads
	c.payloads, c.ephemerals, c.createdAts = c.payloads[:0], c.ephemerals[:0], c.createdAts[:0]
	c.routed = c.routed[:0]
}

func (c *batchColumns) add(e *envelope.Envelope) {
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
}

// commit writes items as one implicit transaction, in one round trip: it
// stores the envelopes (insertMessagesSQL), unstores those with a
// tombstone (unstoreTombstonedSQL), which it marks in acked, then marks
// the ids to mark routed (markRoutedSQL; after the insert, so that an id
// stored and marked in the same batch ends up routed). It is the
// group-commit writer's CommitFunc: it runs on the writer goroutine only.
func (s *Store) commit(items []write, acked []bool) error {
	s.groupCommits.Add(1)
	cols := &s.cols
	cols.reset()
	defer cols.reset()
	for _, w := range items {
		if w.env != nil {
			cols.add(w.env)
		} else {
			cols.routed = append(cols.routed, w.routed)
		}
	}
	// The batch belongs to several callers: no single caller's context may
	// abort it.
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	b := &pgx.Batch{}
	if len(cols.ids) > 0 {
		b.Queue(insertMessagesSQL, cols.ids, cols.senders, cols.recipients, cols.types,
			cols.payloads, cols.ephemerals, cols.createdAts)
		b.Queue(unstoreTombstonedSQL, cols.ids)
	}
	if len(cols.routed) > 0 {
		b.Queue(markRoutedSQL, cols.routed)
	}
	gone, err := s.sendWrite(ctx, b, len(cols.ids) > 0, len(cols.routed) > 0)
	if err != nil {
		return s.wrap(fmt.Sprintf("write %d envelopes, %d routed marks", len(cols.ids), len(cols.routed)), err)
	}
	if len(gone) > 0 {
		for i, w := range items {
			if w.env != nil {
				_, acked[i] = gone[w.env.ID]
			}
		}
	}
	return nil
}

// sendWrite runs the batch queued by commit (the insert and the tombstone
// lookup if put, the routed mark if mark) and returns the ids with a
// tombstone (nil when none has).
func (s *Store) sendWrite(ctx context.Context, b *pgx.Batch, put, mark bool) (map[string]struct{}, error) {
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	var gone map[string]struct{}
	if put {
		var err error
		if gone, err = readPut(br); err != nil {
			return nil, err
		}
	}
	if mark {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
	}
	// Close reports an error of the implicit transaction's commit.
	return gone, br.Close()
}

// readPut reads the results of insertMessagesSQL and unstoreTombstonedSQL.
func readPut(br pgx.BatchResults) (map[string]struct{}, error) {
	if _, err := br.Exec(); err != nil {
		return nil, err
	}
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

// Pending returns up to limit (at most 500) of recipient's envelopes stored
// after cursor, in store order.
func (s *Store) Pending(ctx context.Context, recipient, cursor string, limit int) (store.Page, error) {
	if s.closed.Load() {
		return store.Page{}, store.ErrClosed
	}
	after, err := store.DecodeCursor(cursor)
	if err != nil {
		return store.Page{}, fmt.Errorf("postgres pending: %w", err)
	}
	limit = min(max(limit, 1), maxPage)
	rows, err := s.pool.Query(ctx, `SELECT seq, id, sender, type, payload, ephemeral, created_at
		FROM messages WHERE recipient = $1 AND seq > $2 ORDER BY seq LIMIT $3`, recipient, after, limit+1)
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
		if err := rows.Scan(&lastSeq, &e.ID, &e.Sender, &e.Type, &e.Payload, &e.Ephemeral, &e.CreatedAt); err != nil {
			return store.Page{}, s.wrap("pending: scan", err)
		}
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

// Ack deletes recipient's envelopes with these ids, records a tombstone of
// each in the same statement, and returns how many it deleted; other
// recipients' and unknown ids are ignored.
func (s *Store) Ack(ctx context.Context, recipient string, ids []string) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	if len(ids) == 0 {
		return 0, nil
	}
	var n int
	if err := s.pool.QueryRow(ctx, ackSQL, recipient, ids, storedTime(time.Now())).Scan(&n); err != nil {
		return 0, s.wrap("ack", err)
	}
	return n, nil
}

// DeleteBefore deletes envelopes created before t, in statements of at most
// 5000 rows, and returns how many it deleted.
func (s *Store) DeleteBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "retention",
		`DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE created_at < $1 LIMIT $2)`, t)
}

// DeleteTombstonesBefore deletes the tombstones of acks made before t, in
// statements of at most 5000 rows, and returns how many it deleted.
func (s *Store) DeleteTombstonesBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "tombstone retention",
		`DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones WHERE acked_at < $1 LIMIT $2)`, t)
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
