package main

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var s []int64
	for i := int64(1); i <= 100; i++ {
		s = append(s, i)
	}
	for _, c := range []struct {
		p    float64
		want int64
	}{{.5, 50}, {.9, 90}, {.99, 99}, {1, 100}, {.001, 1}, {0, 1}} {
		if got := percentile(s, c.p); got != c.want {
			t.Errorf("percentile(1..100, %v) = %d, want %d", c.p, got, c.want)
		}
	}
	if got := percentile(nil, .5); got != 0 {
		t.Errorf("percentile(nil) = %d", got)
	}
	if got := percentile([]int64{7}, .99); got != 7 {
		t.Errorf("percentile([7], .99) = %d", got)
	}
	// Nearest rank: the p99 of 10 samples is the largest.
	ten := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if got := percentile(ten, .99); got != 10 {
		t.Errorf("p99 of 10 samples = %d, want 10", got)
	}
	if got := percentile(ten, .5); got != 5 {
		t.Errorf("p50 of 10 samples = %d, want 5", got)
	}
}

func TestLatencyStats(t *testing.T) {
	if newLatencyStats(nil) != nil {
		t.Fatal("no samples: want nil")
	}
	var l latencies
	for i := 1000; i >= 1; i-- {
		l.Add(time.Duration(i) * time.Millisecond)
	}
	s := newLatencyStats(l.Sorted())
	want := latencyStats{N: 1000, P50: 500, P90: 900, P99: 990, Max: 1000}
	if *s != want {
		t.Errorf("got %+v, want %+v", *s, want)
	}
	if got := (&latencyStats{N: 3, P50: 1.5, P90: 2, P99: 2.5, Max: 3}).String(); got != "p50 1.50 ms  p90 2.00 ms  p99 2.50 ms  max 3.00 ms  (n=3)" {
		t.Errorf("String() = %q", got)
	}
}

func TestCheckerOnline(t *testing.T) {
	c := newChecker(2, 1)
	c.Accepted("a", 0)
	c.Received("a", 0, 0, time.Millisecond)
	// Receipt before the sender has read its 202.
	c.Received("b", 1, 0, 2*time.Millisecond)
	if c.Outstanding() != 0 || c.OwedTo(1) != 0 {
		t.Fatalf("before b's 202: outstanding %d", c.Outstanding())
	}
	c.Accepted("b", 1)
	c.Accepted("c", 1) // never arrives
	c.Received("a", 0, 0, 5*time.Millisecond)
	c.Received("a", 0, 0, 5*time.Millisecond)
	if got := c.Outstanding(); got != 1 {
		t.Errorf("outstanding %d, want 1", got)
	}
	if c.OwedTo(0) != 0 || c.OwedTo(1) != 1 {
		t.Errorf("owed %d, %d; want 0, 1", c.OwedTo(0), c.OwedTo(1))
	}
	r := c.Result()
	if r.Missing != 1 || r.MissingDeliveries != 1 || !slices.Equal(r.MissingIDs, []string{"c"}) {
		t.Errorf("missing %d/%d %v, want 1/1 [c]", r.Missing, r.MissingDeliveries, r.MissingIDs)
	}
	if got := c.duplicates.Load(); got != 2 {
		t.Errorf("duplicates %d, want 2 (not loss)", got)
	}
	if c.matched.Load() != 2 || c.accepted.Load() != 3 {
		t.Errorf("matched %d accepted %d, want 2, 3", c.matched.Load(), c.accepted.Load())
	}
	// Duplicates do not add latency samples.
	if !slices.Equal(r.Latencies, []int64{int64(time.Millisecond), int64(2 * time.Millisecond)}) {
		t.Errorf("latencies %v", r.Latencies)
	}
	if r.Unexpected != 0 {
		t.Errorf("unexpected %d", r.Unexpected)
	}
}

func TestCheckerFanout(t *testing.T) {
	c := newChecker(1, 3)
	c.Accepted("x", 0)
	c.Accepted("y", 0)
	for slot := range 3 {
		c.Received("x", 0, slot, 0)
	}
	c.Received("y", 0, 0, 0)
	c.Received("y", 0, 2, 0)
	c.Received("y", 0, 2, 0) // duplicate on slot 2
	if got := c.Outstanding(); got != 1 {
		t.Errorf("outstanding %d, want 1 (y on slot 1)", got)
	}
	r := c.Result()
	if r.Missing != 1 || r.MissingDeliveries != 1 || r.MissingIDs[0] != "y" {
		t.Errorf("missing %d/%d %v, want 1/1 [y]", r.Missing, r.MissingDeliveries, r.MissingIDs)
	}
	if c.duplicates.Load() != 1 {
		t.Errorf("duplicates %d, want 1", c.duplicates.Load())
	}
}

func TestCheckerAnomalies(t *testing.T) {
	c := newChecker(2, 1)
	c.Received("stray", 0, 0, 0) // never answered 202 to us
	c.Accepted("m", 0)
	c.Received("m", 1, 0, 0) // on the other recipient's connection
	c.Received("early", 1, 0, 0)
	c.Accepted("early", 0) // then answered for recipient 0: the receipt was misrouted
	c.Accepted("m", 0)     // the same id twice
	r := c.Result()
	if r.Unexpected != 1 {
		t.Errorf("unexpected %d, want 1", r.Unexpected)
	}
	if c.misrouted.Load() != 2 {
		t.Errorf("misrouted %d, want 2", c.misrouted.Load())
	}
	if c.reusedIDs.Load() != 1 {
		t.Errorf("reused %d, want 1", c.reusedIDs.Load())
	}
	if r.Missing != 2 || !slices.Equal(r.MissingIDs, []string{"early", "m"}) {
		t.Errorf("missing %d %v, want 2 [early m]", r.Missing, r.MissingIDs)
	}
}

func TestCheckerMissingIDsCapped(t *testing.T) {
	c := newChecker(1, 1)
	for i := range 25 {
		c.Accepted(fmt.Sprintf("id%02d", i), 0)
	}
	r := c.Result()
	if r.Missing != 25 || len(r.MissingIDs) != 10 || r.MissingIDs[0] != "id00" {
		t.Errorf("missing %d, ids %v", r.Missing, r.MissingIDs)
	}
}

func TestCheckerConcurrent(t *testing.T) {
	const recipients, conns, per = 8, 4, 500
	c := newChecker(recipients, conns)
	var wg sync.WaitGroup
	for r := range recipients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				c.Accepted(fmt.Sprintf("%d-%d", r, i), r)
			}
		}()
		for slot := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range per {
					c.Received(fmt.Sprintf("%d-%d", r, i), r, slot, time.Microsecond)
					if i%10 == 0 {
						c.Received(fmt.Sprintf("%d-%d", r, i), r, slot, time.Microsecond)
					}
				}
			}()
		}
	}
	wg.Wait()
	r := c.Result()
	if c.Outstanding() != 0 || r.Missing != 0 || r.Unexpected != 0 {
		t.Errorf("outstanding %d missing %d unexpected %d", c.Outstanding(), r.Missing, r.Unexpected)
	}
	if got, want := c.duplicates.Load(), int64(recipients*conns*per/10); got != want {
		t.Errorf("duplicates %d, want %d", got, want)
	}
	if len(r.Latencies) != recipients*conns*per {
		t.Errorf("%d latencies", len(r.Latencies))
	}
	for i := range recipients {
		if c.OwedTo(i) != 0 {
			t.Errorf("owed to %d: %d", i, c.OwedTo(i))
		}
	}
}

func TestStatusCounts(t *testing.T) {
	var s statusCounts
	s.AddStatus(429)
	s.AddStatus(429)
	s.AddStatus(0)
	s.Add("fetch 503")
	got := s.Snapshot()
	if got["429"] != 2 || got["transport"] != 1 || got["fetch 503"] != 1 || s.Total() != 4 {
		t.Errorf("got %v", got)
	}
	if countsString(got) != "429: 2, fetch 503: 1, transport: 1" {
		t.Errorf("countsString: %q", countsString(got))
	}
}
