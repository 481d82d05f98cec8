package groupcommit

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/go-routing-service/routingservice/internal/store"
)

var errBad = errors.New("bad item")

// recorder is a CommitFunc that records every commit's items, reports ten
// times each item as its result, and fails a commit holding a negative item.
type recorder struct {
	mu      sync.Mutex
	commits [][]int
}

func (r *recorder) commit(items []int, results []int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.commits = append(r.commits, slices.Clone(items))
	for i, it := range items {
		if results[i] != 0 {
			panic("results not zeroed before a commit")
		}
		results[i] = 10 * it
	}
	if slices.ContainsFunc(items, func(i int) bool { return i < 0 }) {
		return errBad
	}
	return nil
}

func (r *recorder) got() [][]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.commits)
}

// queued builds a Writer whose queue already holds one request per element
// of reqs, then starts its writer: the batches it forms are deterministic.
func queued(t *testing.T, maxBatch int, commit CommitFunc[int, int], reqs ...[]int) (*Writer[int, int], []*request[int, int]) {
	t.Helper()
	w := &Writer[int, int]{
		maxBatch: maxBatch,
		commit:   commit,
		log:      slog.New(slog.DiscardHandler),
		reqs:     make(chan *request[int, int], len(reqs)),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	out := make([]*request[int, int], len(reqs))
	for i, items := range reqs {
		out[i] = &request[int, int]{items: items, results: make([]int, len(items)), done: make(chan error, 1)}
		w.reqs <- out[i]
	}
	go w.run()
	t.Cleanup(w.Close)
	return w, out
}

func TestBatchesUpToMaxBatch(t *testing.T) {
	var r recorder
	_, reqs := queued(t, 3, r.commit, []int{1}, []int{2}, []int{3}, []int{4, 5}, []int{6, 7, 8, 9}, []int{10})
	for i, req := range reqs {
		if err := <-req.done; err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	// A batch closes once it holds maxBatch items or more; a request larger
	// than maxBatch is never split.
	want := [][]int{{1, 2, 3}, {4, 5, 6, 7, 8, 9}, {10}}
	if got := r.got(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("commits %v, want %v", got, want)
	}
	// Each request gets the results of its own items back.
	for i, req := range reqs {
		if want := timesTen(req.items); !slices.Equal(req.results, want) {
			t.Errorf("request %d: results %v, want %v", i, req.results, want)
		}
	}
}

func timesTen(items []int) []int {
	out := make([]int, len(items))
	for i, it := range items {
		out[i] = 10 * it
	}
	return out
}

func TestFailedBatchRetriesOneByOne(t *testing.T) {
	var r recorder
	_, reqs := queued(t, 100, r.commit, []int{1}, []int{-2, 3}, []int{4})
	wantErrs := []error{nil, errBad, nil}
	for i, req := range reqs {
		if err := <-req.done; !errors.Is(err, wantErrs[i]) {
			t.Errorf("request %d: %v, want %v", i, err, wantErrs[i])
		}
	}
	want := [][]int{{1, -2, 3, 4}, {1}, {-2, 3}, {4}}
	if got := r.got(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("commits %v, want %v", got, want)
	}
	// The requests retried alone get their results from their own commit.
	for _, i := range []int{0, 2} {
		if want := timesTen(reqs[i].items); !slices.Equal(reqs[i].results, want) {
			t.Errorf("request %d: results %v, want %v", i, reqs[i].results, want)
		}
	}
}

func TestSubmitAndClose(t *testing.T) {
	var r recorder
	w := New(10, r.commit, slog.New(slog.DiscardHandler))
	results := make([]int, 2)
	if err := w.Submit(t.Context(), []int{1, 2}, results); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(results, []int{10, 20}) {
		t.Errorf("results %v, want [10 20]", results)
	}
	if err := w.Submit(t.Context(), []int{-1}, nil); !errors.Is(err, errBad) {
		t.Fatalf("Submit of a failing commit: %v, want %v", err, errBad)
	}
	w.Close()
	w.Close() // idempotent
	if err := w.Submit(t.Context(), []int{3}, nil); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Submit after Close: %v, want store.ErrClosed", err)
	}
	want := [][]int{{1, 2}, {-1}}
	if got := r.got(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("commits %v, want %v", got, want)
	}
}

// TestSubmitContextEnds checks that a caller stops waiting when its context
// ends, and that Close still waits for the commit in progress.
func TestSubmitContextEnds(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	var committed []int
	w := New(10, func(items []int, _ []struct{}) error {
		close(entered)
		<-release
		committed = slices.Clone(items)
		return nil
	}, slog.New(slog.DiscardHandler))

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- w.Submit(ctx, []int{7}, nil) }()
	<-entered
	cancel()
	if err := <-errc; err != context.Canceled {
		t.Fatalf("Submit with a cancelled context: %v, want context.Canceled itself", err)
	}
	closed := make(chan struct{})
	go func() {
		w.Close()
		close(closed)
	}()
	close(release)
	<-closed
	if !slices.Equal(committed, []int{7}) {
		t.Errorf("committed %v after Close, want [7]", committed)
	}

	// A context that has already ended never reaches a closed or busy writer.
	if err := w.Submit(ctx, []int{8}, nil); err == nil {
		t.Error("Submit with an ended context on a closed writer succeeded")
	}
}
