// Package presencetest is the conformance suite for presence.Presence
// adapters. Every adapter runs RunConformanceTests against a fresh registry
// per test, the way gocloud.dev's drivertest checks each pubsub driver.
package presencetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/presence"
)

// ConformanceTTL is the TTL the suite asks for in the tests that watch
// entries expire. It is short so the suite runs quickly against real servers.
const ConformanceTTL = time.Second

// longTTL is the TTL of tests that must not see anything expire.
const longTTL = time.Minute

// RunConformanceTests runs the suite. newPresence returns a fresh, isolated
// registry with the given TTL (registries of different calls must not see
// each other's entries) and arranges for it to be closed when t ends; the
// suite may close it earlier itself, so Close must tolerate a second call.
// Subtests run in parallel.
func RunConformanceTests(t *testing.T, newPresence func(t *testing.T, ttl time.Duration) presence.Presence) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, newPresence func(t *testing.T, ttl time.Duration) presence.Presence)
	}{
		{"AddInstances", testAddInstances},
		{"UnknownUser", testUnknownUser},
		{"InstancesOf", testInstancesOf},
		{"ManyConnsManyInstances", testManyConnsManyInstances},
		{"RemoveKeepsInstanceWithOtherConn", testRemoveKeepsInstance},
		{"RemoveUnknownIsNoop", testRemoveUnknown},
		{"AddTwiceIsIdempotent", testAddTwice},
		{"ExpiresWithoutRefresh", testExpires},
		{"RefreshKeepsAlive", testRefreshKeepsAlive},
		{"RefreshEmpty", testRefreshEmpty},
		{"UserIsolation", testUserIsolation},
		{"Ping", testPing},
		{"Close", testClose},
		{"ConcurrentAddRemove", testConcurrent},
		{"CanceledContext", testCanceledContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newPresence)
		})
	}
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustAdd(ctx context.Context, t *testing.T, p presence.Presence, c presence.Conn) {
	t.Helper()
	if err := p.Add(ctx, c); err != nil {
		t.Fatalf("Add(%+v): %v", c, err)
	}
}

func mustRemove(ctx context.Context, t *testing.T, p presence.Presence, c presence.Conn) {
	t.Helper()
	if err := p.Remove(ctx, c); err != nil {
		t.Fatalf("Remove(%+v): %v", c, err)
	}
}

// instances returns the sorted instances of user.
func instances(ctx context.Context, t *testing.T, p presence.Presence, user string) []string {
	t.Helper()
	got, err := p.Instances(ctx, user)
	if err != nil {
		t.Fatalf("Instances(%q): %v", user, err)
	}
	got = slices.Clone(got)
	slices.Sort(got)
	return got
}

func wantInstances(ctx context.Context, t *testing.T, p presence.Presence, user string, want ...string) {
	t.Helper()
	got := instances(ctx, t, p, user)
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("Instances(%q) = %q, want %q", user, got, want)
	}
}

func testAddInstances(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	mustAdd(ctx, t, p, presence.Conn{User: "urn:sm:user:alice", Instance: "i1", ID: "c1"})
	wantInstances(ctx, t, p, "urn:sm:user:alice", "i1")
}

func testUnknownUser(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	got, err := p.Instances(ctx, "urn:sm:user:nobody")
	if err != nil {
		t.Fatalf("Instances of unknown user: %v", err)
	}
	if len(got) != 0 {
		t.Fatalf("Instances of unknown user = %q, want none", got)
	}
}

func testManyConnsManyInstances(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	user := "urn:sm:user:bob"
	for _, inst := range []string{"i1", "i2", "i3"} {
		for k := range 4 {
			mustAdd(ctx, t, p, presence.Conn{User: user, Instance: inst, ID: fmt.Sprintf("c%d", k)})
		}
	}
	// Each instance is listed once, however many connections it holds.
	wantInstances(ctx, t, p, user, "i1", "i2", "i3")
}

func testRemoveKeepsInstance(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	user := "urn:sm:user:carol"
	a := presence.Conn{User: user, Instance: "i1", ID: "a"}
	b := presence.Conn{User: user, Instance: "i1", ID: "b"}
	c := presence.Conn{User: user, Instance: "i2", ID: "a"}
	mustAdd(ctx, t, p, a)
	mustAdd(ctx, t, p, b)
	mustAdd(ctx, t, p, c)

	mustRemove(ctx, t, p, a)
	wantInstances(ctx, t, p, user, "i1", "i2")

	// The same connection id on another instance is a different connection.
	mustRemove(ctx, t, p, c)
	wantInstances(ctx, t, p, user, "i1")

	mustRemove(ctx, t, p, b)
	wantInstances(ctx, t, p, user)
}

func testRemoveUnknown(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	mustRemove(ctx, t, p, presence.Conn{User: "urn:sm:user:ghost", Instance: "i1", ID: "c1"})
	mustAdd(ctx, t, p, presence.Conn{User: "urn:sm:user:dan", Instance: "i1", ID: "c1"})
	mustRemove(ctx, t, p, presence.Conn{User: "urn:sm:user:dan", Instance: "i1", ID: "other"})
	wantInstances(ctx, t, p, "urn:sm:user:dan", "i1")
}

func testAddTwice(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	c := presence.Conn{User: "urn:sm:user:erin", Instance: "i1", ID: "c1"}
	mustAdd(ctx, t, p, c)
	mustAdd(ctx, t, p, c)
	wantInstances(ctx, t, p, c.User, "i1")
	// One Remove undoes both Adds: entries are per connection, not counted.
	mustRemove(ctx, t, p, c)
	wantInstances(ctx, t, p, c.User)
}

// waitEmpty polls until user has no instances, failing after deadline.
func waitEmpty(ctx context.Context, t *testing.T, p presence.Presence, user string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if len(instances(ctx, t, p, user)) == 0 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Instances(%q) still not empty %v after the last Add/Refresh (TTL %v)", user, within, ConformanceTTL)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("waiting for expiry: %v", ctx.Err())
		}
	}
}

func testExpires(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, ConformanceTTL)
	user := "urn:sm:user:frank"
	added := time.Now()
	mustAdd(ctx, t, p, presence.Conn{User: user, Instance: "i1", ID: "c1"})
	mustAdd(ctx, t, p, presence.Conn{User: user, Instance: "i2", ID: "c1"})
	got := instances(ctx, t, p, user)
	if len(got) != 2 && time.Since(added) < ConformanceTTL/2 {
		t.Fatalf("Instances right after Add = %q, want 2 instances", got)
	}
	waitEmpty(ctx, t, p, user, ConformanceTTL+5*time.Second)
	if since := time.Since(added); since < ConformanceTTL/2 {
		t.Fatalf("entries vanished after %v, well before the TTL %v", since, ConformanceTTL)
	}
}

func testRefreshKeepsAlive(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, ConformanceTTL)
	user := "urn:sm:user:grace"
	conns := []presence.Conn{
		{User: user, Instance: "i1", ID: "c1"},
		{User: user, Instance: "i2", ID: "c1"},
		{User: "urn:sm:user:heidi", Instance: "i1", ID: "c2"},
	}
	for _, c := range conns {
		mustAdd(ctx, t, p, c)
	}
	// Heartbeat at a quarter of the TTL for three TTLs: the entries must
	// stay listed throughout, well past the TTL of the first Add.
	start := time.Now()
	beat := time.NewTicker(ConformanceTTL / 4)
	defer beat.Stop()
	for time.Since(start) < 3*ConformanceTTL {
		select {
		case <-beat.C:
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		if err := p.Refresh(ctx, conns); err != nil {
			t.Fatalf("Refresh: %v", err)
		}
		wantInstances(ctx, t, p, user, "i1", "i2")
		wantInstances(ctx, t, p, "urn:sm:user:heidi", "i1")
	}
	// Once the heartbeat stops they expire.
	waitEmpty(ctx, t, p, user, ConformanceTTL+5*time.Second)
	waitEmpty(ctx, t, p, "urn:sm:user:heidi", ConformanceTTL+5*time.Second)
}

func testRefreshEmpty(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	if err := p.Refresh(ctx, nil); err != nil {
		t.Fatalf("Refresh(nil): %v", err)
	}
}

func testUserIsolation(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	mustAdd(ctx, t, p, presence.Conn{User: "urn:sm:user:ivan", Instance: "i1", ID: "c1"})
	mustAdd(ctx, t, p, presence.Conn{User: "urn:sm:user:judy", Instance: "i2", ID: "c1"})
	// A user whose name is a prefix of another's is a different user.
	mustAdd(ctx, t, p, presence.Conn{User: "urn:sm:user:ivan2", Instance: "i3", ID: "c1"})
	wantInstances(ctx, t, p, "urn:sm:user:ivan", "i1")
	wantInstances(ctx, t, p, "urn:sm:user:judy", "i2")
	wantInstances(ctx, t, p, "urn:sm:user:ivan2", "i3")
	mustRemove(ctx, t, p, presence.Conn{User: "urn:sm:user:judy", Instance: "i1", ID: "c1"})
	wantInstances(ctx, t, p, "urn:sm:user:ivan", "i1")
	mustRemove(ctx, t, p, presence.Conn{User: "urn:sm:user:ivan", Instance: "i1", ID: "c1"})
	wantInstances(ctx, t, p, "urn:sm:user:ivan")
	wantInstances(ctx, t, p, "urn:sm:user:judy", "i2")
}

func testPing(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	if err := p.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func testClose(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	c := presence.Conn{User: "urn:sm:user:ken", Instance: "i1", ID: "c1"}
	mustAdd(ctx, t, p, c)
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checks := map[string]error{
		"Add":       p.Add(ctx, c),
		"Remove":    p.Remove(ctx, c),
		"Refresh":   p.Refresh(ctx, []presence.Conn{c}),
		"Ping":      p.Ping(ctx),
		"Instances": func() error { _, err := p.Instances(ctx, c.User); return err }(),
	}
	for op, err := range checks {
		if !errors.Is(err, presence.ErrClosed) {
			t.Errorf("%s after Close: got %v, want presence.ErrClosed", op, err)
		}
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func testConcurrent(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, longTTL)
	const workers, perWorker = 16, 50
	user := "urn:sm:user:lee"
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			inst := fmt.Sprintf("i%d", w%4)
			for k := range perWorker {
				c := presence.Conn{User: user, Instance: inst, ID: fmt.Sprintf("w%d-c%d", w, k)}
				if err := p.Add(ctx, c); err != nil {
					errs <- err
					return
				}
				if _, err := p.Instances(ctx, user); err != nil {
					errs <- err
					return
				}
				if err := p.Refresh(ctx, []presence.Conn{c}); err != nil {
					errs <- err
					return
				}
				// Keep the last connection of each worker; remove the rest.
				if k < perWorker-1 {
					if err := p.Remove(ctx, c); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent operation: %v", err)
	}
	wantInstances(ctx, t, p, user, "i0", "i1", "i2", "i3")
	for w := range workers {
		mustRemove(ctx, t, p, presence.Conn{User: user, Instance: fmt.Sprintf("i%d", w%4), ID: fmt.Sprintf("w%d-c%d", w, perWorker-1)})
	}
	wantInstances(ctx, t, p, user)
}

func testCanceledContext(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	p := newPresence(t, longTTL)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	// An adapter that does no I/O may complete; one that does must not
	// block. Either way the call returns, and a failure names the context.
	err := p.Add(ctx, presence.Conn{User: "urn:sm:user:mia", Instance: "i1", ID: "c1"})
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Add with canceled context: got %v, want nil or context.Canceled", err)
	}
}

// InstancesOf answers for many users at once what Instances answers for
// each, in the order asked, unknown users and repeats included.
func testInstancesOf(t *testing.T, newPresence func(*testing.T, time.Duration) presence.Presence) {
	ctx := ctxFor(t)
	p := newPresence(t, time.Minute)
	mustAdd(ctx, t, p, presence.Conn{User: "urn:sm:user:a", Instance: "i1", ID: "c1"})
	mustAdd(ctx, t, p, presence.Conn{User: "urn:sm:user:a", Instance: "i2", ID: "c2"})
	mustAdd(ctx, t, p, presence.Conn{User: "urn:sm:user:b", Instance: "i2", ID: "c3"})
	var users []string
	for i := range 1500 { // more than one round trip's worth
		users = append(users, fmt.Sprintf("urn:sm:user:nobody%d", i))
	}
	users = append(users, "urn:sm:user:b", "urn:sm:user:a", "urn:sm:user:b")
	got, err := p.InstancesOf(ctx, users)
	if err != nil {
		t.Fatalf("InstancesOf: %v", err)
	}
	if len(got) != len(users) {
		t.Fatalf("InstancesOf returned %d answers for %d users", len(got), len(users))
	}
	for i, u := range users {
		want, err := p.Instances(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(want)
		g := slices.Sorted(slices.Values(got[i]))
		if !slices.Equal(g, want) {
			t.Fatalf("InstancesOf[%d] (%s) = %q, Instances = %q", i, u, g, want)
		}
	}
	if n := len(got[len(got)-2]); n != 2 {
		t.Fatalf("user a: %d instances, want 2", n)
	}
	if got, err := p.InstancesOf(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("InstancesOf(nil) = %v, %v", got, err)
	}
}
