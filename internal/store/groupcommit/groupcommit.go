// Package groupcommit groups concurrent writes into shared commits: one
// writer goroutine takes a queued request, then every request already
// queued (up to a batch size, without waiting for more), and commits them
// together. The store adapters use it so that many small PutMessages calls
// cost one transaction between them.
package groupcommit

import (
	"context"
	"log/slog"
	"sync"

	"github.com/go-routing-service/routingservice/internal/store"
)

// CommitFunc durably writes items, in order, as one unit: all of them or,
// with an error, as if none. A Writer calls it from its single writer
// goroutine only, never concurrently, so it may reuse buffers between calls.
// It must not keep items after it returns.
type CommitFunc[E any] func(items []E) error

// Writer is a group-commit writer. Its methods are safe for concurrent use.
type Writer[E any] struct {
	maxBatch int
	commit   CommitFunc[E]
	log      *slog.Logger

	reqs      chan *request[E] // Submit -> writer; unbuffered
	quit      chan struct{}    // closed by Close: the writer stops taking requests
	done      chan struct{}    // closed when the writer goroutine has returned
	closeOnce sync.Once
}

// request is one Submit call waiting for the writer.
type request[E any] struct {
	items []E
	done  chan error // buffered (1): the writer never blocks on it
}

// New starts a Writer that commits with commit, taking at most maxBatch
// items per combined commit (at least one request, however large). log
// receives a warning when a combined commit fails. The caller must Close
// the Writer to stop its goroutine.
func New[E any](maxBatch int, commit CommitFunc[E], log *slog.Logger) *Writer[E] {
	w := &Writer[E]{
		maxBatch: max(maxBatch, 1),
		commit:   commit,
		log:      log,
		reqs:     make(chan *request[E]),
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
// be committed. Submit keeps no reference to items once it returns nil or
// a commit error.
func (w *Writer[E]) Submit(ctx context.Context, items []E) error {
	req := &request[E]{items: items, done: make(chan error, 1)}
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
func (w *Writer[E]) Close() {
	w.closeOnce.Do(func() { close(w.quit) })
	<-w.done
}

// run is the writer goroutine, owned by the Writer (started by New,
// stopped by Close).
func (w *Writer[E]) run() {
	defer close(w.done)
	batch := make([]*request[E], 0, 64)
	var flat []E
	for {
		var first *request[E]
		select {
		case first = <-w.reqs:
		case <-w.quit:
			return
		}
		batch = append(batch[:0], first)
		n := len(first.items)
	collect:
		for n < w.maxBatch {
			select {
			case req := <-w.reqs:
				batch = append(batch, req)
				n += len(req.items)
			default:
				break collect
			}
		}
		flat = w.commitBatch(batch, n, flat)
		clear(batch)
	}
}

// commitBatch commits batch as one unit and answers every request. If that
// fails, each request is retried alone so that one request's failure is
// not every request's. It returns flat, the reusable buffer, emptied.
func (w *Writer[E]) commitBatch(batch []*request[E], n int, flat []E) []E {
	var err error
	if len(batch) == 1 {
		err = w.commit(batch[0].items)
	} else {
		flat = flat[:0]
		for _, req := range batch {
			flat = append(flat, req.items...)
		}
		err = w.commit(flat)
		clear(flat) // drop references to callers' items
		flat = flat[:0]
	}
	if err != nil && len(batch) > 1 {
		w.log.Warn("store group commit failed, retrying requests one by one", "requests", len(batch), "items", n, "err", err)
		for _, req := range batch {
			req.done <- w.commit(req.items)
		}
		return flat
	}
	for _, req := range batch {
		req.done <- err
	}
	return flat
}
