// Package testkit holds small helpers the tests of several packages share:
// a buffer that goroutines may write while a test reads it, and the
// removal of the Redis keys a test's instances made on a shared server.
package testkit

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Buffer is a bytes.Buffer safe for concurrent writes and reads: a log
// sink, or a command's output, that a test reads while it is written.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is what was written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// DeleteRedisKeys removes, after the test, the keys under prefix on the
// Redis server at addr (those the test's instances made on a shared
// server).
func DeleteRedisKeys(t testing.TB, addr, prefix string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		it := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for it.Next(ctx) {
			if err := rdb.Del(ctx, it.Val()).Err(); err != nil {
				t.Errorf("delete key %s: %v", it.Val(), err)
			}
		}
		if err := it.Err(); err != nil {
			t.Errorf("scan keys %s*: %v", prefix, err)
		}
	})
}
