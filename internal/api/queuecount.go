package api

import (
	"sync"
	"time"
)

// queueCounts remembers the pending counts read for recipients, so that a
// send to a recipient far below the cap does not read the store: a count
// read less than countFresh ago, plus the sends this instance accepted for
// that recipient since, below half the cap, lets a send through. Anything
// closer to the cap reads the store again, and only a count read from the
// store refuses a send. Acks only lower the real count, so the remembered
// one errs on the side of reading. Other instances' sends meanwhile are
// not seen: with N instances sending to one recipient, each lets through
// at most half the cap past its last read, whatever countFresh is.
type queueCounts struct {
	mu sync.Mutex
	m  map[string]queueCount
}

type queueCount struct {
	n  int
	at time.Time
}

// countFresh is how long a count read from the store is used: most
// recipients get a message now and then, and a read per send would cost
// the store more than the send itself.
const countFresh = 10 * time.Second

// maxQueueCounts bounds the memory: the map starts over when it is full.
const maxQueueCounts = 1 << 16

// roomFor reports whether a count remembered for recipient shows room far
// below limit, counting this send if so.
func (q *queueCounts) roomFor(recipient string, limit int, now time.Time) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	c, ok := q.m[recipient]
	if !ok || now.Sub(c.at) >= countFresh || c.n >= limit/2 {
		return false
	}
	c.n++
	q.m[recipient] = c
	return true
}

// read remembers n, read from the store at now, plus this send.
func (q *queueCounts) read(recipient string, n int, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.m == nil || len(q.m) >= maxQueueCounts {
		q.m = make(map[string]queueCount)
	}
	q.m[recipient] = queueCount{n: n + 1, at: now}
}
