package batch

import (
	"context"
	"slices"
	"testing"
)

// Next waits for one value, then takes what waits after it up to the
// bound, and leaves the rest on the channel in order.
func TestNextTakesOneThenWhatWaitsUpToMax(t *testing.T) {
	c := make(chan int, 10)
	for i := range 5 {
		c <- i
	}
	b, ok := Next(context.Background(), nil, c, 3)
	if !ok || !slices.Equal(b, []int{0, 1, 2}) {
		t.Fatalf("first batch %v %v, want [0 1 2] true", b, ok)
	}
	b, ok = Next(context.Background(), b[:0], c, 3)
	if !ok || !slices.Equal(b, []int{3, 4}) {
		t.Fatalf("second batch %v %v, want [3 4] true: what waits, not a full batch", b, ok)
	}
}

// Next gives up when its context ends or the channel closes before a
// value comes, leaving b as it was.
func TestNextEndsWithoutAValue(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if b, ok := Next(ctx, []int{7}, make(chan int), 3); ok || !slices.Equal(b, []int{7}) {
		t.Fatalf("ended context: %v %v, want [7] false", b, ok)
	}
	c := make(chan int)
	close(c)
	if b, ok := Next(context.Background(), nil, c, 3); ok || len(b) != 0 {
		t.Fatalf("closed channel: %v %v, want [] false", b, ok)
	}
}

// Fill never waits, never passes max, and reports a closed channel once
// what waited on it is taken.
func TestFillStopsAtMaxAndReportsClose(t *testing.T) {
	c := make(chan int, 4)
	if b, ok := Fill([]int{9}, c, 3); !ok || !slices.Equal(b, []int{9}) {
		t.Fatalf("empty channel: %v %v, want [9] true", b, ok)
	}
	c <- 1
	c <- 2
	c <- 3
	if b, ok := Fill([]int{9}, c, 3); !ok || !slices.Equal(b, []int{9, 1, 2}) {
		t.Fatalf("full batch: %v %v, want [9 1 2] true", b, ok)
	}
	if b, ok := Fill([]int{0, 0, 0}, c, 3); !ok || len(b) != 3 || len(c) != 1 {
		t.Fatalf("batch full before: %v %v with %d waiting, want nothing taken", b, ok, len(c))
	}
	close(c)
	if b, ok := Fill(nil, c, 3); ok || !slices.Equal(b, []int{3}) {
		t.Fatalf("closed channel: %v %v, want [3] false", b, ok)
	}
}

// Drain stops as soon as add is full, taking nothing more.
func TestDrainStopsWhenAddIsFull(t *testing.T) {
	c := make(chan int, 4)
	for i := range 4 {
		c <- i
	}
	sum, n := 0, 0
	open := Drain(c, func(v int) bool { sum += v; n++; return n < 2 })
	if !open || n != 2 || sum != 1 || len(c) != 2 {
		t.Fatalf("took %d (sum %d, open %v), %d left; want 2 (sum 1, open), 2 left", n, sum, open, len(c))
	}
}
