package push_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/store"
)

// memTargets is an in-memory store.Targets that counts lookups.
type memTargets struct {
	mu      sync.Mutex
	m       map[string][]store.Target
	lookups map[string]int
	fail    error
}

func newMemTargets() *memTargets {
	return &memTargets{m: map[string][]store.Target{}, lookups: map[string]int{}}
}

func (s *memTargets) PutTarget(_ context.Context, user string, t store.Target, _ int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[user] = append(slices.DeleteFunc(s.m[user], func(o store.Target) bool {
		return o.Platform == t.Platform && o.Token == t.Token
	}), t)
	return nil
}

func (s *memTargets) DeleteTarget(_ context.Context, user string, t store.Target) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[user] = slices.DeleteFunc(s.m[user], func(o store.Target) bool {
		return o.Platform == t.Platform && o.Token == t.Token
	})
	return nil
}

func (s *memTargets) Targets(_ context.Context, user string) ([]store.Target, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lookups[user]++
	if s.fail != nil {
		return nil, s.fail
	}
	return slices.Clone(s.m[user]), nil
}

func (s *memTargets) lookupsOf(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookups[user]
}

func (s *memTargets) of(user string) []store.Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.m[user])
}

// fakeSender records sends; errs maps a token to the error it returns;
// gate, when set, blocks each send until it is closed or ctx ends.
type fakeSender struct {
	platforms []string
	errs      map[string]error
	gate      chan struct{}

	mu       sync.Mutex
	sent     []push.Notification
	inflight int
	maxIn    int
}

func (f *fakeSender) Platforms() []string { return f.platforms }

func (f *fakeSender) Send(ctx context.Context, t store.Target, n push.Notification) error {
	f.mu.Lock()
	f.inflight++
	f.maxIn = max(f.maxIn, f.inflight)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return fmt.Errorf("fake send: %w", ctx.Err())
		}
	}
	if err := f.errs[t.Token]; err != nil {
		return err
	}
	f.mu.Lock()
	f.sent = append(f.sent, n)
	f.mu.Unlock()
	return nil
}

func (f *fakeSender) got() []push.Notification {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent)
}

func (f *fakeSender) state() (inflight, maxIn int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inflight, f.maxIn
}

// fakeClock is a settable clock.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// eventually polls cond until it holds, failing t after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// run starts d and stops it (waiting for Run to return) when t ends.
func run(t *testing.T, d *push.Dispatcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func note(user string, i int) push.Notification {
	return push.Notification{Recipient: user, MessageID: fmt.Sprintf("m%d", i), Type: "chat"}
}

func TestCoalescing(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	const bob = "urn:sm:user:bob"
	_ = st.PutTarget(context.Background(), bob, store.Target{Platform: "android", Token: "a1"}, 0)
	s := &fakeSender{platforms: []string{"android", "ios"}}
	clk := newFakeClock()
	d := push.NewDispatcher(st, []push.Sender{s}, push.DispatcherOptions{CoalesceWindow: time.Minute, LeadingOnly: true, Now: clk.Now})
	run(t, d)

	for i := range 10 {
		d.Notify(note(bob, i))
	}
	eventually(t, "one push and 9 coalesced", func() bool {
		return d.Count(push.OutcomeSent, "android") == 1 && d.Count(push.OutcomeCoalesced, push.PlatformAll) == 9
	})
	if got := s.got(); len(got) != 1 || got[0].MessageID != "m0" {
		t.Fatalf("pushes = %v, want only m0", got)
	}
	clk.Advance(time.Minute)
	d.Notify(note(bob, 10))
	eventually(t, "a push in the next window", func() bool { return d.Count(push.OutcomeSent, "android") == 2 })
	if got := s.got(); got[1].MessageID != "m10" {
		t.Fatalf("second push = %v, want m10", got[1])
	}
	if n := st.lookupsOf(bob); n != 2 {
		t.Errorf("lookups = %d, want 2 (one per window)", n)
	}
}

func TestTrailingPush(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	const bob = "urn:sm:user:bob"
	_ = st.PutTarget(context.Background(), bob, store.Target{Platform: "android", Token: "a1"}, 0)
	s := &fakeSender{platforms: []string{"android"}}
	d := push.NewDispatcher(st, []push.Sender{s}, push.DispatcherOptions{CoalesceWindow: 300 * time.Millisecond})
	run(t, d)
	for i := range 5 {
		d.Notify(note(bob, i))
	}
	eventually(t, "leading and trailing pushes", func() bool { return len(s.got()) == 2 })
	got := s.got()
	if got[0].MessageID != "m0" || got[1].MessageID != "m4" {
		t.Fatalf("pushes = %v, want m0 then m4", got)
	}
	if c := d.Count(push.OutcomeCoalesced, push.PlatformAll); c != 4 {
		t.Errorf("coalesced = %v, want 4", c)
	}
}

func TestNoTargetsCostOneLookupPerWindow(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	const ghost = "urn:sm:user:ghost"
	s := &fakeSender{platforms: []string{"android"}}
	const window = 200 * time.Millisecond
	d := push.NewDispatcher(st, []push.Sender{s}, push.DispatcherOptions{CoalesceWindow: window})
	run(t, d)
	start := time.Now()
	d.Notify(note(ghost, 0))
	eventually(t, "first lookup", func() bool { return st.lookupsOf(ghost) == 1 })
	for i := range 20 {
		d.Notify(note(ghost, i+1))
	}
	eventually(t, "coalescing", func() bool { return d.Count(push.OutcomeCoalesced, push.PlatformAll) == 20 })
	// Let the window, and the one a trailing push would open, pass.
	<-time.After(time.Until(start.Add(3 * window)))
	if n := st.lookupsOf(ghost); n != 1 {
		t.Fatalf("lookups = %d, want 1 (no trailing lookup for a recipient without targets)", n)
	}
	d.Notify(note(ghost, 99))
	eventually(t, "a lookup in the next window", func() bool { return st.lookupsOf(ghost) == 2 })
}

func TestGoneTargetRemoved(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	const bob = "urn:sm:user:bob"
	ctx := context.Background()
	_ = st.PutTarget(ctx, bob, store.Target{Platform: "android", Token: "dead"}, 0)
	_ = st.PutTarget(ctx, bob, store.Target{Platform: "webpush", Token: "https://push.example/live"}, 0)
	_ = st.PutTarget(ctx, bob, store.Target{Platform: "android", Token: "broken"}, 0)
	a := &fakeSender{platforms: []string{"android"}, errs: map[string]error{
		"dead":   fmt.Errorf("provider said: %w", push.ErrTargetGone),
		"broken": errors.New("provider is confused"),
	}}
	w := &fakeSender{platforms: []string{"webpush"}}
	d := push.NewDispatcher(st, []push.Sender{a, w}, push.DispatcherOptions{})
	run(t, d)
	d.Notify(note(bob, 0))
	eventually(t, "all outcomes", func() bool {
		return d.Count(push.OutcomeRemoved, "android") == 1 && d.Count(push.OutcomeSent, "webpush") == 1 &&
			d.Count(push.OutcomeFailed, "android") == 1
	})
	left := st.of(bob)
	if len(left) != 2 || slices.ContainsFunc(left, func(t store.Target) bool { return t.Token == "dead" }) {
		t.Fatalf("targets left = %v, want the live and the broken one", left)
	}
}

func TestNoSenderForPlatformDropped(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	_ = st.PutTarget(context.Background(), "urn:sm:user:bob", store.Target{Platform: "apns", Token: "ab"}, 0)
	d := push.NewDispatcher(st, nil, push.DispatcherOptions{})
	run(t, d)
	d.Notify(note("urn:sm:user:bob", 0))
	eventually(t, "dropped", func() bool { return d.Count(push.OutcomeDropped, "apns") == 1 })
}

func TestLookupFailureAndTimeoutCounted(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	st.fail = errors.New("store down")
	d := push.NewDispatcher(st, nil, push.DispatcherOptions{})
	run(t, d)
	d.Notify(note("urn:sm:user:bob", 0))
	eventually(t, "failed lookup", func() bool { return d.Count(push.OutcomeFailed, push.PlatformAll) == 1 })

	st2 := newMemTargets()
	_ = st2.PutTarget(context.Background(), "urn:sm:user:bob", store.Target{Platform: "android", Token: "slow"}, 0)
	slow := &fakeSender{platforms: []string{"android"}, gate: make(chan struct{})} // never opened
	d2 := push.NewDispatcher(st2, []push.Sender{slow}, push.DispatcherOptions{Timeout: 50 * time.Millisecond})
	run(t, d2)
	d2.Notify(note("urn:sm:user:bob", 0))
	eventually(t, "send timed out", func() bool { return d2.Count(push.OutcomeFailed, "android") == 1 })
}

func TestBoundedConcurrency(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	s := &fakeSender{platforms: []string{"android"}, gate: make(chan struct{})}
	const users = 12
	for i := range users {
		_ = st.PutTarget(context.Background(), fmt.Sprintf("urn:sm:user:u%d", i), store.Target{Platform: "android", Token: fmt.Sprint(i)}, 0)
	}
	d := push.NewDispatcher(st, []push.Sender{s}, push.DispatcherOptions{Concurrency: 3, Timeout: time.Minute})
	run(t, d)
	for i := range users {
		d.Notify(note(fmt.Sprintf("urn:sm:user:u%d", i), i))
	}
	eventually(t, "3 sends in flight", func() bool { in, _ := s.state(); return in == 3 })
	close(s.gate)
	eventually(t, "all sent", func() bool { return d.Count(push.OutcomeSent, "android") == users })
	if _, maxIn := s.state(); maxIn != 3 {
		t.Fatalf("max sends in flight = %d, want 3", maxIn)
	}
}

func TestQueueFullDropsAndRunDrains(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	s := &fakeSender{platforms: []string{"android"}}
	for i := range 5 {
		_ = st.PutTarget(context.Background(), fmt.Sprintf("urn:sm:user:u%d", i), store.Target{Platform: "android", Token: "t"}, 0)
	}
	reg := prometheus.NewRegistry()
	d := push.NewDispatcher(st, []push.Sender{s}, push.DispatcherOptions{QueueSize: 2, Registerer: reg})
	for i := range 5 {
		d.Notify(note(fmt.Sprintf("urn:sm:user:u%d", i), i)) // Run not started: 2 fit
	}
	if c := d.Count(push.OutcomeDropped, push.PlatformAll); c != 3 {
		t.Fatalf("dropped = %v, want 3", c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Run drains what is queued and returns
	if err := d.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.got(); len(got) != 2 {
		t.Fatalf("drained %d pushes, want 2", len(got))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if !slices.Contains(names, "routing_push_notifications_total") {
		t.Fatalf("registered metrics %v lack routing_push_notifications_total", names)
	}
	// A second dispatcher on the same registry shares the counter.
	d2 := push.NewDispatcher(st, nil, push.DispatcherOptions{Registerer: reg})
	if c := d2.Count(push.OutcomeSent, "android"); c != 2 {
		t.Errorf("shared counter = %v, want 2", c)
	}
}

func TestRunTwiceRefused(t *testing.T) {
	t.Parallel()
	d := push.NewDispatcher(newMemTargets(), nil, push.DispatcherOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 2)
	go func() { done <- d.Run(ctx) }()
	go func() { done <- d.Run(ctx) }()
	// Exactly one of the two concurrent Runs is refused at once.
	if err := <-done; err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("first Run to return gave %v, want the refusal", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("running Run returned %v", err)
	}
}

// hostSender is a webpush sender whose sends to https://slow.example/...
// block until their context ends (or release is closed); others succeed.
// It counts sends per host.
type hostSender struct {
	release  chan struct{}
	mu       sync.Mutex
	calls    map[string]int
	inflight int
	maxSlow  int
}

func (h *hostSender) Platforms() []string { return []string{"webpush"} }

func (h *hostSender) Send(ctx context.Context, t store.Target, _ push.Notification) error {
	slow := strings.HasPrefix(t.Token, "https://slow.example/")
	h.mu.Lock()
	if h.calls == nil {
		h.calls = map[string]int{}
	}
	host := "fast"
	if slow {
		host = "slow"
		h.inflight++
		h.maxSlow = max(h.maxSlow, h.inflight)
	}
	h.calls[host]++
	h.mu.Unlock()
	if !slow {
		return nil
	}
	select {
	case <-ctx.Done():
	case <-h.release:
	}
	h.mu.Lock()
	h.inflight--
	h.mu.Unlock()
	return errors.New("slow host did not answer")
}

func (h *hostSender) count(host string) (calls, maxSlow int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[host], h.maxSlow
}

// A recipient's targets are sent at once, under one time budget: two
// slow targets are in flight together, and the fast one is not held back.
func TestTargetsSentInParallel(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	const bob = "urn:sm:user:bob"
	for _, tok := range []string{"https://slow.example/a", "https://slow.example/b", "https://fast.example/c"} {
		_ = st.PutTarget(context.Background(), bob, store.Target{Platform: "webpush", Token: tok}, 0)
	}
	s := &hostSender{release: make(chan struct{})}
	d := push.NewDispatcher(st, []push.Sender{s}, push.DispatcherOptions{Timeout: time.Minute, BreakerFailures: 100})
	run(t, d)
	t.Cleanup(func() { close(s.release) }) // before Run's drain
	d.Notify(note(bob, 0))
	eventually(t, "the fast target sent while both slow ones are in flight", func() bool {
		_, maxSlow := s.count("slow")
		return d.Count(push.OutcomeSent, "webpush") == 1 && maxSlow == 2
	})
}

// A host that keeps failing gets its circuit opened: later pushes to it
// fail at once without a request (other hosts are still served), until
// the cooldown ends and one push probes it.
func TestBreakerOpensPerHost(t *testing.T) {
	t.Parallel()
	st := newMemTargets()
	clock := newFakeClock()
	user := func(i int) string { return fmt.Sprintf("urn:sm:user:u%d", i) }
	for i := range 5 {
		_ = st.PutTarget(context.Background(), user(i), store.Target{Platform: "webpush", Token: fmt.Sprintf("https://slow.example/%d", i)}, 0)
		_ = st.PutTarget(context.Background(), user(i), store.Target{Platform: "webpush", Token: fmt.Sprintf("https://fast.example/%d", i)}, 0)
	}
	s := &hostSender{release: make(chan struct{})}
	d := push.NewDispatcher(st, []push.Sender{s}, push.DispatcherOptions{
		Timeout: 20 * time.Millisecond, BreakerFailures: 2, BreakerCooldown: time.Minute, Now: clock.Now,
	})
	run(t, d)
	for i := range 2 {
		d.Notify(note(user(i), i))
		eventually(t, "a failure counted", func() bool { return d.Count(push.OutcomeFailed, "webpush") == float64(i+1) })
	}
	// Open: u2's push to the slow host fails without a request.
	d.Notify(note(user(2), 2))
	eventually(t, "u2 served", func() bool {
		return d.Count(push.OutcomeSent, "webpush") == 3 && d.Count(push.OutcomeFailed, "webpush") == 3
	})
	if calls, _ := s.count("slow"); calls != 2 {
		t.Fatalf("slow host got %d sends with its circuit open, want 2", calls)
	}
	// After the cooldown, one push probes the host.
	clock.Advance(time.Minute)
	d.Notify(note(user(3), 3))
	eventually(t, "u3 served", func() bool {
		return d.Count(push.OutcomeSent, "webpush") == 4 && d.Count(push.OutcomeFailed, "webpush") == 4
	})
	if calls, _ := s.count("slow"); calls != 3 {
		t.Fatalf("slow host got %d sends after the cooldown, want 3 (one probe)", calls)
	}
}
