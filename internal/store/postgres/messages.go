package postgres

import (
	"context"
	"fmt"
	"time"

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

// PutMessages stores envs, idempotently on id, in the order given. It
// returns once the statement holding them committed, or with ctx's error if
// ctx ends first, in which case they may or may not have been stored.
func (s *Store) PutMessages(ctx context.Context, envs []*envelope.Envelope) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if len(envs) == 0 {
		return nil
	}
	for i, e := range envs {
		if e == nil || e.ID == "" {
			return fmt.Errorf("postgres put: envelope %d has no id", i)
		}
	}
	err := s.writer.Submit(ctx, envs)
	if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr { // Submit returns ctx.Err() itself
		return fmt.Errorf("postgres put: %w", err)
	}
	return err
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

// insertMessages writes envs with one statement. It is the group-commit
// writer's CommitFunc: it runs on the writer goroutine only.
func (s *Store) insertMessages(envs []*envelope.Envelope) error {
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
	if _, err := s.pool.Exec(ctx, insertMessagesSQL, cols.ids, cols.senders, cols.recipients, cols.types,
		cols.payloads, cols.ephemerals, cols.createdAts); err != nil {
		return s.wrap(fmt.Sprintf("put %d envelopes", len(cols.ids)), err)
	}
	return nil
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

// Ack deletes recipient's envelopes with these ids and returns how many it
// deleted; other recipients' and unknown ids are ignored.
func (s *Store) Ack(ctx context.Context, recipient string, ids []string) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	if len(ids) == 0 {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, "DELETE FROM messages WHERE recipient = $1 AND id = ANY($2)", recipient, ids)
	if err != nil {
		return 0, s.wrap("ack", err)
	}
	return int(tag.RowsAffected()), nil
}

// DeleteBefore deletes envelopes created before t, in statements of at most
// 5000 rows, and returns how many it deleted.
func (s *Store) DeleteBefore(ctx context.Context, t time.Time) (int, error) {
	return s.deleteInChunks(ctx, "retention",
		`DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE created_at < $1 LIMIT $2)`, t)
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
