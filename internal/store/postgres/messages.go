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

// insertMessagesSQL inserts a batch given as parallel arrays, in array
// order (so seq follows the order of the calls and of each call's slice),
// skipping ids already stored.
const insertMessagesSQL = `INSERT INTO messages (id, sender, recipient, type, payload, ephemeral, created_at)
SELECT id, sender, recipient, type, payload, ephemeral, created_at
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

// PutMessages stores envs, idempotently on id, in the order given, except
// those whose id has a tombstone (acked[i] true; see store.Messages). It
// returns once the transaction holding them committed, or with ctx's error
// if ctx ends first, in which case they may or may not have been stored.
func (s *Store) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	if len(envs) == 0 {
		return nil, nil
	}
	for i, e := range envs {
		if e == nil || e.ID == "" {
			return nil, fmt.Errorf("postgres put: envelope %d has no id", i)
		}
	}
	acked := make([]bool, len(envs))
	err := s.writer.Submit(ctx, envs, acked)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr { // Submit returns ctx.Err() itself
		return nil, fmt.Errorf("postgres put: %w", err)
	}
	if err != nil || !slices.Contains(acked, true) {
		return nil, err
	}
	return acked, nil
}

// batchColumns are the parallel arrays of one insert, reused between batches.
type batchColumns struct {
	ids, senders, recipients, types []string
	payloads                        [][]byte
	ephemerals                      []bool
	createdAts                      []time.Time
}

func (c *batchColumns) reset() {
	c.ids, c.senders, c.recipients, c.types = c.ids[:0], c.senders[:0], c.recipients[:0], c.types[:0]
	clear(c.payloads) // drop references to callers' payloads
	c.payloads, c.ephemerals, c.createdAts = c.payloads[:0], c.ephemerals[:0], c.createdAts[:0]
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

// insertMessages writes envs, except those with a tombstone, which it marks
// in acked: insertMessagesSQL, then unstoreTombstonedSQL, sent together in
// one round trip and run as one implicit transaction. It is the
// group-commit writer's CommitFunc: it runs on the writer goroutine only.
func (s *Store) insertMessages(envs []*envelope.Envelope, acked []bool) error {
	s.groupCommits.Add(1)
	cols := &s.cols
	cols.reset()
	defer cols.reset()
	for _, e := range envs {
		cols.add(e)
	}
	// The batch belongs to several callers: no single caller's context may
	// abort it.
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue(insertMessagesSQL, cols.ids, cols.senders, cols.recipients, cols.types,
		cols.payloads, cols.ephemerals, cols.createdAts)
	b.Queue(unstoreTombstonedSQL, cols.ids)
	gone, err := s.sendPut(ctx, b)
	if err != nil {
		return s.wrap(fmt.Sprintf("put %d envelopes", len(cols.ids)), err)
	}
	if len(gone) > 0 {
		for i, e := range envs {
			_, acked[i] = gone[e.ID]
		}
	}
	return nil
}

// sendPut runs the batch queued by insertMessages and returns the ids
// with a tombstone (nil when none has).
func (s *Store) sendPut(ctx context.Context, b *pgx.Batch) (map[string]struct{}, error) {
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
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
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	// Close reports an error of the implicit transaction's commit.
	return gone, br.Close()
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
