package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/presence/presencetest"
)

const addrEnv = "ROUTING_TEST_REDIS_ADDR"

func redisAddr(tb testing.TB) string {
	tb.Helper()
	addr := os.Getenv(addrEnv)
	if addr == "" {
		tb.Skipf("%s is not set; set it to a Redis address such as 127.0.0.1:6379 to run the Redis presence tests", addrEnv)
	}
	return addr
}

// newTestPresence makes a registry under a random key prefix and deletes
// every key under that prefix when tb ends.
func newTestPresence(tb testing.TB, ttl time.Duration) (*Presence, string) {
	tb.Helper()
	addr := redisAddr(tb)
	var b [8]byte
	_, _ = rand.Read(b[:])
	prefix := "routingtest:" + hex.EncodeToString(b[:]) + ":"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := New(ctx, Options{Addr: addr, KeyPrefix: prefix, TTL: ttl})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() {
		_ = p.Close()
		cleanPrefix(tb, addr, prefix)
	})
	return p, prefix
}

func cleanPrefix(tb testing.TB, addr, prefix string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	defer c.Close()
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		tb.Errorf("scan %s*: %v", prefix, err)
		return
	}
	if len(keys) > 0 {
		if err := c.Del(ctx, keys...).Err(); err != nil {
			tb.Errorf("delete test keys: %v", err)
		}
	}
}

func TestConformance(t *testing.T) {
	redisAddr(t)
	presencetest.RunConformanceTests(t, func(t *testing.T, ttl time.Duration) presence.Presence {
		p, _ := newTestPresence(t, ttl)
		return p
	})
}

func TestKeyLayoutAndExpiry(t *testing.T) {
	ctx := t.Context()
	p, prefix := newTestPresence(t, time.Minute)
	c := presence.Conn{User: "urn:sm:user:alice", Instance: "i1", ID: "c1"}
	if err := p.Add(ctx, c); err != nil {
		t.Fatal(err)
	}
	raw := p.client
	key := prefix + "presence:" + c.User
	ttl, err := raw.PTTL(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= 0 || ttl > time.Minute {
		t.Fatalf("PTTL(%s) = %v, want in (0, 1m]", key, ttl)
	}
	members, err := raw.ZRangeWithScores(ctx, key, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 1 || members[0].Member != "i1|c1" {
		t.Fatalf("members = %+v, want one i1|c1", members)
	}
	now, err := raw.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	exp := time.UnixMilli(int64(members[0].Score))
	if d := exp.Sub(now); d <= 50*time.Second || d > time.Minute {
		t.Fatalf("member expires %v after server time, want about 1m", d)
	}

	// A crashed instance's member lingers only until its expiry: a stale
	// member scored in the past is not listed and is dropped by the next write.
	stale := float64(now.Add(-time.Second).UnixMilli())
	if err := raw.ZAdd(ctx, key, goredis.Z{Score: stale, Member: "dead|c9"}).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := p.Instances(ctx, c.User)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"i1"}) {
		t.Fatalf("Instances = %q, want [i1]", got)
	}
	if err := p.Refresh(ctx, []presence.Conn{c}); err != nil {
		t.Fatal(err)
	}
	if n, err := raw.ZCard(ctx, key).Result(); err != nil || n != 1 {
		t.Fatalf("ZCARD after refresh = %d, %v; want 1 (stale member dropped)", n, err)
	}

	// Removing the last connection leaves no key behind.
	if err := p.Remove(ctx, c); err != nil {
		t.Fatal(err)
	}
	if n, err := raw.Exists(ctx, key).Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS after last Remove = %d, %v; want 0", n, err)
	}
}

func TestRefreshBatchesAndReloadsScripts(t *testing.T) {
	ctx := t.Context()
	p, _ := newTestPresence(t, time.Minute)
	// A script the server has never seen stands for a flushed script cache:
	// the first pipelined EVALSHA fails with NOSCRIPT and Refresh must load
	// the script and retry.
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	p.upsert = goredis.NewScript(upsertSrc + "-- " + hex.EncodeToString(nonce[:]) + "\n")
	conns := make([]presence.Conn, 2*roundTripBatch+7)
	for i := range conns {
		conns[i] = presence.Conn{User: fmt.Sprintf("urn:sm:user:u%d", i%500), Instance: fmt.Sprintf("i%d", i%3), ID: fmt.Sprint(i)}
	}
	if err := p.Refresh(ctx, conns); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	for u := range 500 {
		got, err := p.Instances(ctx, fmt.Sprintf("urn:sm:user:u%d", u))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			t.Fatalf("user u%d has no instances after Refresh", u)
		}
	}
}

func TestRejectsSeparatorInInstance(t *testing.T) {
	p, _ := newTestPresence(t, time.Minute)
	if err := p.Add(t.Context(), presence.Conn{User: "urn:sm:user:a", Instance: "bad|name", ID: "c"}); err == nil {
		t.Fatal("Add accepted an instance containing '|'")
	}
}

func TestNewFailsWhenUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	// Port 1 on loopback has no listener.
	if _, err := New(ctx, Options{Addr: "127.0.0.1:1", TTL: time.Second}); err == nil {
		t.Fatal("New succeeded against an address with no server")
	}
	if _, err := New(ctx, Options{TTL: time.Second}); err == nil {
		t.Fatal("New accepted an empty Addr")
	}
}

// addUsers registers n users, each with a connection on two instances,
// and returns their names.
func addUsers(b *testing.B, p *Presence, n int) []string {
	names := make([]string, n)
	for u := range names {
		names[u] = fmt.Sprintf("urn:sm:user:u%d", u)
		for k := range 2 {
			if err := p.Add(b.Context(), presence.Conn{User: names[u], Instance: fmt.Sprintf("i%d", k), ID: "c"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	return names
}

func BenchmarkInstances(b *testing.B) {
	p, _ := newTestPresence(b, time.Minute)
	ctx := b.Context()
	const users = 1000
	names := addUsers(b, p, users)
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

// BenchmarkInstancesOf64 looks up 64 users per call, one after another (the
// pipeline's batch); ns/op is per batch.
func BenchmarkInstancesOf64(b *testing.B) {
	p, _ := newTestPresence(b, time.Minute)
	ctx := b.Context()
	const users = 1000
	names := addUsers(b, p, users)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		batch := names[i%(users-64) : i%(users-64)+64]
		got, err := p.InstancesOf(ctx, batch)
		if err != nil || len(got) != 64 || len(got[0]) != 2 {
			b.Fatalf("InstancesOf = %d answers, %v", len(got), err)
		}
		i += 64
	}
}

func BenchmarkRefresh1000(b *testing.B) {
	p, _ := newTestPresence(b, time.Minute)
	ctx := b.Context()
	conns := make([]presence.Conn, 1000)
	for k := range conns {
		conns[k] = presence.Conn{User: fmt.Sprintf("urn:sm:user:u%d", k), Instance: "i1", ID: fmt.Sprint(k)}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := p.Refresh(ctx, conns); err != nil {
			b.Fatal(err)
		}
	}
}
