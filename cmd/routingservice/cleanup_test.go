package main

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// deleteKeys removes, after the test, the Redis keys under prefix that
// instances on the shared Redis made.
func deleteKeys(t *testing.T, addr, prefix string) {
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
