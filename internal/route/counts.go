package route

import (
	"sync"
	"time"
)

// queueCounts remembers the pending counts read from the store for a key (a
// recipient's queue, or what a sender has pending), so that a send far
// below the caps does not read the store: a count read less than
// countFresh ago, plus the sends this instance accepted for that key since,
// below half of each cap, lets a send through. Anything closer to a cap
// reads the store again, and only a count read from the store refuses a
// send. Acks only lower the real count, so the remembered one errs on the
// side of reading. Other instances' sends meanwhile are not seen: with N
// instances sending for one key, each lets through at most half a cap past
// its last read, whatever countFresh is.
type queueCounts struct {
	mu sync.Mutex
	m  map[string]queueCount
}

// queueCount is a remembered count: messages and their payload bytes (the
// bytes are kept for senders only).
type queueCount struct {
	n     int
	bytes int64
	at    time.Time
}

// countFresh is how long a count read from the store is used: most
// recipients get a message now and then, and a read per send would cost
// the store more than the send itself.
const countFresh = 10 * time.Second

// maxQueueCounts bounds the memory: the map starts over when it is full.
const maxQueueCounts = 1 << 16

// roomFor reports whether a count remembered for key shows room far below
// the caps (at most limit messages, at most maxBytes bytes; <= 0: no cap)
// for a send of size payload bytes, counting this send if so.
func (q *queueCounts) roomFor(key string, limit int, maxBytes, size int64, now time.Time) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	c, ok := q.m[key]
	if !ok || now.Sub(c.at) >= countFresh {
		return false
	}
	if limit > 0 && c.n >= limit/2 {
		return false
	}
	if maxBytes > 0 && c.bytes+size > maxBytes/2 {
		return false
	}
	c.n++
	c.bytes += size
	q.m[key] = c
	return true
}

// read remembers n messages of bytes payload bytes, read from the store at
// now, plus this send of size bytes.
func (q *queueCounts) read(key string, n int, bytes, size int64, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.m == nil || len(q.m) >= maxQueueCounts {
		q.m = make(map[string]queueCount)
	}
	q.m[key] = queueCount{n: n + 1, bytes: bytes + size, at: now}
}
