package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"strings"
)

// inQuery is one of the group-commit writer's statements with an IN list
// of ids.
type inQuery uint8

const (
	tombstoneLookup  inQuery = iota // put: the ids among the checked puts' that have a tombstone
	ackLookup                       // ack: the recipients of the ids acked
	tombstoneInsert                 // ack: a tombstone of each id deleted that needs one (first argument: acked_at)
	ackDelete                       // ack: delete the ids
	markRoutedUpdate                // markRouted: mark the ids routed
	numInQueries
)

// inSizes are the lengths of the IN lists the writer's statements are
// prepared with: a statement with n ids runs the shape of the smallest
// size >= n, its other places bound to NULL, which no id equals. The
// statements are prepared once (see prepareIn) rather than for each count
// of ids, which cost the writer a parse per statement per commit; padding
// costs at most as many NULLs as ids.
var inSizes = [...]int{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, idChunk}

// inSizeIndex returns the index in inSizes of the smallest size >= n
// (1 <= n <= idChunk).
func inSizeIndex(n int) int {
	for i, size := range inSizes {
		if n <= size {
			return i
		}
	}
	panic("sqlite: IN list longer than idChunk")
}

// inSQL returns q's text with an IN list of n places.
func inSQL(q inQuery, n int) string {
	in := "?" + strings.Repeat(",?", n-1) + ")"
	switch q {
	case tombstoneLookup:
		return "SELECT id FROM tombstones WHERE id IN (" + in
	case ackLookup:
		return "SELECT id, recipient FROM messages WHERE id IN (" + in
	case tombstoneInsert:
		// Only for envelopes that need one (not those PutNew stored). A
		// tombstone left by an earlier ack of the same id (possible only
		// once the sweep removed it and the id was stored again) is renewed.
		return `INSERT INTO tombstones (id, recipient, acked_at)
			SELECT id, recipient, ? FROM messages WHERE tombstone <> 0 AND id IN (` + in + `
			ON CONFLICT (id) DO UPDATE SET acked_at = excluded.acked_at`
	case ackDelete:
		return "DELETE FROM messages WHERE id IN (" + in
	case markRoutedUpdate:
		return markRoutedSQL + in
	}
	panic("sqlite: unknown IN query")
}

// inStmts holds the writer's prepared IN-list statements, by query and
// size index; a nil entry is not prepared yet. Writer goroutine only
// (and Close, once the writer stopped).
type inStmts [numInQueries][len(inSizes)]*sql.Stmt

// prepareIn prepares, on the write connection, the statements of q for
// every size up to the one n ids need (n capped at idChunk), those not
// prepared yet: commit calls it before it begins its transaction (which
// holds the only write connection), for the largest count of ids a
// statement of the batch can take, so that every statement it runs is
// ready.
func (s *Store) prepareIn(ctx context.Context, q inQuery, n int) error {
	if n <= 0 {
		return nil
	}
	last := inSizeIndex(min(n, idChunk))
	for i := 0; i <= last; i++ {
		if s.in[q][i] != nil {
			continue
		}
		stmt, err := s.w.PrepareContext(ctx, inSQL(q, inSizes[i]))
		if err != nil {
			return s.wrap("write: prepare", err)
		}
		s.in[q][i] = stmt
	}
	return nil
}

// inStmt returns q's statement for ids (1 to idChunk of them), bound to
// tx, and ids padded with NULLs to the length of its IN list. The
// statement must be prepared (prepareIn).
func (s *Store) inStmt(ctx context.Context, tx *sql.Tx, q inQuery, ids []any) (*sql.Stmt, []any) {
	i := inSizeIndex(len(ids))
	for len(ids) < inSizes[i] {
		ids = append(ids, nil)
	}
	return tx.StmtContext(ctx, s.in[q][i]), ids
}

// closeIn closes the prepared IN-list statements.
func (s *Store) closeIn() error {
	var errs []error
	for q := range s.in {
		for i, stmt := range s.in[q] {
			if stmt != nil {
				errs = append(errs, stmt.Close())
				s.in[q][i] = nil
			}
		}
	}
	return errors.Join(errs...)
}
