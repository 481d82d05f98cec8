package web

import (
	"hash/maphash"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter is a token bucket per key (a user, a client address). It keeps one small entry per user
// seen recently and drops users idle for longer than it takes their bucket
// to fill.
type Limiter struct {
	limit  rate.Limit
	burst  int
	idle   time.Duration
	seed   maphash.Seed
	shards [64]limiterShard
}

type limiterShard struct {
	mu    sync.Mutex
	users map[string]*userBucket
	calls int
}

type userBucket struct {
	l    *rate.Limiter
	last time.Time
}

// NewLimiter allows each user perSecond requests on average with bursts of
// burst. perSecond <= 0 returns nil: no limit.
func NewLimiter(perSecond float64, burst int) *Limiter {
	if perSecond <= 0 {
		return nil
	}
	burst = max(burst, 1)
	fill := time.Duration(float64(burst) / perSecond * float64(time.Second))
	l := &Limiter{limit: rate.Limit(perSecond), burst: burst, idle: max(fill, time.Minute), seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].users = map[string]*userBucket{}
	}
	return l
}

// Allow takes one token of the bucket of user (any key) at now. When none is left it
// returns false and how long until one is.
func (l *Limiter) Allow(user string, now time.Time) (bool, time.Duration) {
	sh := &l.shards[maphash.String(l.seed, user)%uint64(len(l.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.calls++
	if sh.calls%1024 == 0 {
		for u, b := range sh.users {
			if now.Sub(b.last) > l.idle {
				delete(sh.users, u)
			}
		}
	}
	b := sh.users[user]
	if b == nil {
		b = &userBucket{l: rate.NewLimiter(l.limit, l.burst)}
		sh.users[user] = b
	}
	b.last = now
	r := b.l.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
