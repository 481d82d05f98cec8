package memory_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/presence/memory"
	"github.com/go-routing-service/routingservice/internal/presence/presencetest"
)

func TestConformance(t *testing.T) {
	presencetest.RunConformanceTests(t, func(t *testing.T, ttl time.Duration) presence.Presence {
		p := memory.New(ttl)
		t.Cleanup(func() { _ = p.Close() })
		return p
	})
}

// fakeClock is a clock advanced by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newFake(t *testing.T, ttl time.Duration) (*memory.Presence, *fakeClock) {
	t.Helper()
	clk := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	p := memory.New(ttl, memory.WithClock(clk.Now))
	t.Cleanup(func() { _ = p.Close() })
	return p, clk
}

func TestExpiryWithClock(t *testing.T) {
	ctx := t.Context()
	p, clk := newFake(t, time.Minute)
	alice := presence.Conn{User: "urn:sm:user:alice", Instance: "i1", ID: "c1"}
	bob := presence.Conn{User: "urn:sm:user:bob", Instance: "i2", ID: "c1"}
	if err := p.Add(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if err := p.Add(ctx, bob); err != nil {
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	if got, _ := p.Instances(ctx, alice.User); !slices.Equal(got, []string{"i1"}) {
		t.Fatalf("before TTL: Instances = %q, want [i1]", got)
	}
	if err := p.Refresh(ctx, []presence.Conn{bob}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if got, _ := p.Instances(ctx, alice.User); len(got) != 0 {
		t.Fatalf("at TTL: Instances = %q, want none", got)
	}
	if got, _ := p.Instances(ctx, bob.User); !slices.Equal(got, []string{"i2"}) {
		t.Fatalf("refreshed: Instances = %q, want [i2]", got)
	}
	// The sweep drops the expired user and keeps the refreshed one.
	if n := p.Len(); n != 2 {
		t.Fatalf("Len before sweep = %d, want 2", n)
	}
	p.Sweep()
	if n := p.Len(); n != 1 {
		t.Fatalf("Len after sweep = %d, want 1", n)
	}
	clk.Advance(time.Minute)
	p.Sweep()
	if n := p.Len(); n != 0 {
		t.Fatalf("Len after the refreshed entry expired = %d, want 0", n)
	}
}

func TestRefreshRegistersMissing(t *testing.T) {
	ctx := t.Context()
	p, _ := newFake(t, time.Minute)
	c := presence.Conn{User: "urn:sm:user:carol", Instance: "i1", ID: "c1"}
	if err := p.Refresh(ctx, []presence.Conn{c}); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.Instances(ctx, c.User); !slices.Equal(got, []string{"i1"}) {
		t.Fatalf("Instances = %q, want [i1]", got)
	}
}

func TestInstancesAllocations(t *testing.T) {
	ctx := t.Context()
	p, _ := newFake(t, time.Minute)
	for k := range 3 {
		if err := p.Add(ctx, presence.Conn{User: "urn:sm:user:dave", Instance: fmt.Sprintf("i%d", k%2), ID: fmt.Sprint(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = p.Instances(ctx, "urn:sm:user:dave") }); n > 1 {
		t.Errorf("Instances allocates %v times per call, want at most 1 (the result)", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = p.Instances(ctx, "urn:sm:user:nobody") }); n != 0 {
		t.Errorf("Instances of an absent user allocates %v times per call, want 0", n)
	}
}

func BenchmarkInstances(b *testing.B) {
	p := memory.New(time.Minute)
	defer p.Close()
	ctx := b.Context()
	const users = 10_000
	for u := range users {
		for k := range 2 {
			_ = p.Add(ctx, presence.Conn{User: fmt.Sprintf("urn:sm:user:u%d", u), Instance: fmt.Sprintf("i%d", k), ID: "c"})
		}
	}
	names := make([]string, users)
	for u := range names {
		names[u] = fmt.Sprintf("urn:sm:user:u%d", u)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			got, err := p.Instances(ctx, names[i%users])
			if err != nil || len(got) != 2 {
				b.Fatalf("Instances = %q, %v", got, err)
			}
			i++
		}
	})
}

func BenchmarkRefresh1000(b *testing.B) {
	p := memory.New(time.Minute)
	defer p.Close()
	ctx := b.Context()
	conns := make([]presence.Conn, 1000)
	for k := range conns {
		conns[k] = presence.Conn{User: fmt.Sprintf("urn:sm:user:u%d", k), Instance: "i1", ID: fmt.Sprint(k)}
		_ = p.Add(ctx, conns[k])
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := p.Refresh(ctx, conns); err != nil {
			b.Fatal(err)
		}
	}
}
