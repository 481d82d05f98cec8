package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"
)

// wconn is the write connection's driver connection as the group-commit
// writer uses it, inside sql.Conn.Raw: statements prepared once on it and
// run without database/sql in between (none of its per-call locking,
// argument conversion, statement rebinding to the transaction or result
// scanning), and the transaction begun and ended by prepared statements
// too. Writer goroutine only (and Close, once the writer stopped), under
// the Store's writeMu.
type wconn struct {
	dc driver.Conn // the connection the statements are prepared on

	named map[string]driver.Stmt                  // fixed statements, by text
	in    [numInQueries][len(inSizes)]driver.Stmt // list statements, by query and size index

	args []driver.NamedValue // the arguments being bound (bind)
	dest []driver.Value      // a row being read (query)
}

// use makes dc the connection: the statements of another one (database/sql
// replaced a bad connection, and closed it) are dropped, not closed.
func (c *wconn) use(dc driver.Conn) {
	if c.dc == dc {
		return
	}
	c.dc = dc
	c.named = make(map[string]driver.Stmt)
	c.in = [numInQueries][len(inSizes)]driver.Stmt{}
}

// stmt returns the statement of query, prepared on first use.
func (c *wconn) stmt(ctx context.Context, query string) (driver.Stmt, error) {
	if st, ok := c.named[query]; ok {
		return st, nil
	}
	st, err := c.prepare(ctx, query)
	if err != nil {
		return nil, err
	}
	c.named[query] = st
	return st, nil
}

func (c *wconn) prepare(ctx context.Context, query string) (driver.Stmt, error) {
	p, ok := c.dc.(driver.ConnPrepareContext)
	if !ok {
		return nil, errors.New("driver connection cannot prepare with a context")
	}
	st, err := p.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	return st, nil
}

// bind appends v to the arguments of the next exec or query.
func (c *wconn) bind(v ...driver.Value) {
	for _, x := range v {
		c.args = append(c.args, driver.NamedValue{Ordinal: len(c.args) + 1, Value: x})
	}
}

// unbind drops the bound arguments (and the references they hold).
func (c *wconn) unbind() {
	clear(c.args)
	c.args = c.args[:0]
}

// exec runs st with the bound arguments, which it drops.
func (c *wconn) exec(ctx context.Context, st driver.Stmt) (driver.Result, error) {
	defer c.unbind()
	return st.(driver.StmtExecContext).ExecContext(ctx, c.args)
}

// execSQL runs the fixed statement query with the bound arguments.
func (c *wconn) execSQL(ctx context.Context, query string) (driver.Result, error) {
	st, err := c.stmt(ctx, query)
	if err != nil {
		c.unbind()
		return nil, err
	}
	return c.exec(ctx, st)
}

// query runs st with the bound arguments, which it drops, and calls row
// with each row's values (valid until row returns).
func (c *wconn) query(ctx context.Context, st driver.Stmt, row func(v []driver.Value) error) error {
	rows, err := func() (driver.Rows, error) {
		defer c.unbind()
		return st.(driver.StmtQueryContext).QueryContext(ctx, c.args)
	}()
	if err != nil {
		return err
	}
	defer rows.Close()
	n := len(rows.Columns())
	if cap(c.dest) < n {
		c.dest = make([]driver.Value, n)
	}
	dest := c.dest[:n]
	defer clear(dest)
	for {
		if err := rows.Next(dest); err == io.EOF {
			return rows.Close()
		} else if err != nil {
			return err
		}
		if err := row(dest); err != nil {
			return err
		}
	}
}

// inStmt returns q's statement for the n ids bound (1 to idChunk),
// prepared on first use, and pads the bound arguments with NULLs to the
// length of its list.
func (c *wconn) inStmt(ctx context.Context, q inQuery, n int) (driver.Stmt, error) {
	i := inSizeIndex(n)
	for len(c.args) < inSizes[i] {
		c.bind(nil)
	}
	if st := c.in[q][i]; st != nil {
		return st, nil
	}
	st, err := c.prepare(ctx, inSQL(q, inSizes[i]))
	if err != nil {
		return nil, err
	}
	c.in[q][i] = st
	return st, nil
}

// The transaction's statements. BEGIN IMMEDIATE takes the database's
// write lock at once.
const (
	beginSQL    = "BEGIN IMMEDIATE"
	commitSQL   = "COMMIT"
	rollbackSQL = "ROLLBACK"
)

// begin begins an immediate transaction.
func (c *wconn) begin(ctx context.Context) error {
	_, err := c.execSQL(ctx, beginSQL)
	return err
}

// commit commits the transaction.
func (c *wconn) commit(ctx context.Context) error {
	_, err := c.execSQL(ctx, commitSQL)
	return err
}

// rollback ends the transaction without its writes. Its error is
// ignored: it fails only where no transaction is open (SQLite ended it on
// the error that led here).
func (c *wconn) rollback(ctx context.Context) {
	c.execSQL(ctx, rollbackSQL)
}

// close closes the statements.
func (c *wconn) close() error {
	var errs []error
	for _, st := range c.named {
		errs = append(errs, st.Close())
	}
	for q := range c.in {
		for _, st := range c.in[q] {
			if st != nil {
				errs = append(errs, st.Close())
			}
		}
	}
	c.named = nil
	c.in = [numInQueries][len(inSizes)]driver.Stmt{}
	return errors.Join(errs...)
}

// inQuery is one of the group-commit writer's statements with a list of
// ids (an IN list).
type inQuery uint8

const (
	tombstoneLookup inQuery = iota // put: the ids among the checked puts' that have a tombstone
	ackLookup                      // ack: what the ledger and the ack need of the ids acked
	ackDelete                      // ack: delete the rows of these seqs
	numInQueries
)

// inSizes are the lengths of the lists the writer's statements are
// prepared with: a statement with n ids runs the shape of the smallest
// size >= n, its other places bound to NULL, which no id equals. The
// statements are prepared once rather than for each count of ids, which
// cost the writer a parse per statement per commit; padding costs at
// most as many NULLs as ids.
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

// inSQL returns q's text with a list of n places.
func inSQL(q inQuery, n int) string {
	in := "?" + strings.Repeat(",?", n-1) + ")"
	switch q {
	case tombstoneLookup:
		return "SELECT id FROM tombstones WHERE id IN (" + in
	case ackLookup:
		return "SELECT id, recipient, seq, sender, length(payload), tombstone <> 0 FROM messages WHERE id IN (" + in
	case ackDelete:
		return "DELETE FROM messages WHERE seq IN (" + in
	}
	panic("sqlite: unknown IN query")
}
