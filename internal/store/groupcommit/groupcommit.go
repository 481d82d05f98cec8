// Package groupcommit groups concurrent writes into shared commits: one
// writer goroutine takes a queued request, then every request already
// queued (up to a batch size, without waiting for more), and commits them
// together. The store adapters use it so that many small PutMessages and
// MarkRouted calls cost one transaction between them.
package groupcommit

import (
	"context"
	"log/slog"
	"sync"

	"github.com/go-routing-service/routingservice/internal/batch"
	"github.com/go-routing-service/routingservice/internal/store"
)

// CommitFunc durably writes items, in order, as one unit: all of them or,
// with an error, as if none. results holds one zero value per item, in
// which it may report an outcome of each (results[i] for items[i]); they
// reach the callers only when it returns nil. A Writer calls it from its
// single writer goroutine only, never concurrently, so it may reuse buffers
// between calls. It must not keep items or results after it returns.
type CommitFunc[E, R any] func(items []E, results []R) error

// Writer is a group-commit writer of items of type E, each with a result of
// type R. Its methods are safe for concurrent use.
type Writer[E, R any] struct {
	maxBatch int
	commit   CommitFunc[E, R]
	log      *slog.Logger

	reqs      chan *request[E, R] // Submit -> writer; unbuffered
	quit      chan struct{}       // closed by Close: the writer stops taking requests
	done      chan struct{}       // closed when the writer goroutine has returned
	closeOnce sync.Once
}

// request is one Submit call waiting for the writer.
type request[E, R any] struct {
	items   []E
	results []R        // nil, or len(items): where the writer copies the results
	done    chan error // buffered (1): the writer never blocks on it
}

// New starts a Writer that commits with commit, taking at most maxBatch
// items per combined commit (at least one request, however large). log
// receives a warning when a combined commit fails. The caller must Close
// the Writer to stop its goroutine.
func New[E, R any](maxBatch int, commit CommitFunc[E, R], log *slog.Logger) *Writer[E, R] {
	w := &Writer[E, R]{
		maxBatch: max(maxBatch, 1),
		commit:   commit,
		log:      log,
		reqs:     make(chan *request[E, R]),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go w.run()
	return w
}

// Submit queues items for the next commit and waits for it. It returns the
// commit's error (nil once the items are committed), store.ErrClosed if the
// Writer is closed before it takes the request, or ctx.Err() itself
// (unwrapped) if ctx ends first, in which case the items may or may not
// be committed.
//
// results is nil (the results are dropped) or has len(items); once Submit
// returns nil it holds the commit's result for each item. After any other
// return its content is unspecified, and after ctx.Err() the writer may
// still write to it: the caller must then neither read nor reuse it.
// Submit keeps no reference to items or results once it returns nil or a
// commit error.
func (w *Writer[E, R]) Submit(ctx context.Context, items []E, results []R) error {
	if results != nil && len(results) != len(items) {
		panic("groupcommit: Submit with len(results) != len(items)")
	}
	req := &request[E, R]{items: items, results: results, done: make(chan error, 1)}
	select {
	case w.reqs <- req:
	case <-w.quit:
		return store.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops taking requests and waits until every request the writer
// already took is committed and answered. Submit calls racing Close either
// complete or return store.ErrClosed. Close is idempotent.
func (w *Writer[E, R]) Close() {
	w.closeOnce.Do(func() { close(w.quit) })
	<-w.done
}

// buffers are the writer goroutine's reusable flat items and results.
type buffers[E, R any] struct {
	items   []E
	results []R
}

// run is the writer goroutine, owned by the Writer (started by New,
// stopped by Close).
func (w *Writer[E, R]) run() {
	defer close(w.done)
	reqs := make([]*request[E, R], 0, 64)
	var buf buffers[E, R]
	for {
		var first *request[E, R]
		select {
		case first = <-w.reqs:
		case <-w.quit:
			return
		}
		reqs = append(reqs[:0], first)
		n := len(first.items)
		if n < w.maxBatch {
			// The requests waiting, up to maxBatch items.
			batch.Drain(w.reqs, func(req *request[E, R]) bool {
				reqs = append(reqs, req)
				n += len(req.items)
				return n < w.maxBatch
			})
		}
		w.commitBatch(reqs, n, &buf)
		clear(reqs)
	}
}

// commitBatch commits batch as one unit and answers every request. If that
// fails, each request is retried alone so that one request's failure is
// not every request's. buf is emptied again before it returns.
func (w *Writer[E, R]) commitBatch(batch []*request[E, R], n int, buf *buffers[E, R]) {
	var err error
	if len(batch) == 1 {
		err = w.commitOne(batch[0], buf)
	} else {
		buf.items = buf.items[:0]
		for _, req := range batch {
			buf.items = append(buf.items, req.items...)
		}
		results := buf.zeroResults(n)
		err = w.commit(buf.items, results)
		clear(buf.items) // drop references to callers' items
		buf.items = buf.items[:0]
		if err == nil {
			for _, req := range batch {
				if req.results != nil {
					copy(req.results, results)
				}
				results = results[len(req.items):]
			}
		}
		clear(buf.results)
	}
	if err != nil && len(batch) > 1 {
		w.log.Warn("store group commit failed, retrying requests one by one", "requests", len(batch), "items", n, "err", err)
		for _, req := range batch {
			req.done <- w.commitOne(req, buf)
		}
		return
	}
	for _, req := range batch {
		req.done <- err
	}
}

// commitOne commits one request's items alone and, on success, copies the
// results to the request.
func (w *Writer[E, R]) commitOne(req *request[E, R], buf *buffers[E, R]) error {
	results := buf.zeroResults(len(req.items))
	err := w.commit(req.items, results)
	if err == nil && req.results != nil {
		copy(req.results, results)
	}
	clear(results) // drop references the results may hold
	return err
}

// zeroResults returns the reusable results buffer, n zero values long.
func (b *buffers[E, R]) zeroResults(n int) []R {
	if cap(b.results) < n {
		b.results = make([]R, n)
	}
	b.results = b.results[:n]
	clear(b.results)
	return b.results
}
