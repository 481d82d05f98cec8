package main

import (
	"hash/maphash"
	"math/bits"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// maxConnsPerRecipient bounds -conns for fanout: each message's receipts are
// kept in one 64-bit mask (the server's own default cap is 16).
const maxConnsPerRecipient = 64

// checker accounts for every message the service answered 202: each must
// reach every connection of its recipient (or, offline, the recipient's
// fetched backlog, as connection 0). A receipt may come before the sender
// has read its 202 (the id is only known then), so both orders are handled.
// A second receipt on the same connection is a duplicate (at-least-once is
// allowed), never a loss.
type checker struct {
	conns  int // connections per recipient that must each receive every message
	seed   maphash.Seed
	shards [64]checkShard

	accepted   atomic.Int64 // distinct ids answered 202
	expected   atomic.Int64 // deliveries owed: accepted × conns
	matched    atomic.Int64 // deliveries of accepted ids (first receipt per connection)
	receipts   atomic.Int64 // first receipts per connection, accepted or not
	duplicates atomic.Int64 // further receipts of an id on a connection
	misrouted  atomic.Int64 // receipts on a connection of another recipient
	reusedIDs  atomic.Int64 // one id answered 202 to two sends
	lastRecv   atomic.Int64 // unix nanos of the latest receipt
	owed       []atomic.Int64
}

type checkShard struct {
	mu  sync.Mutex
	m   map[string]entry
	lat []int64 // send-to-receipt latencies, ns
}

type entry struct {
	mask      uint64 // connections that have it
	recipient int32
	accepted  bool
}

func newChecker(recipients, conns int) *checker {
	c := &checker{conns: conns, seed: maphash.MakeSeed(), owed: make([]atomic.Int64, recipients)}
	for i := range c.shards {
		c.shards[i].m = make(map[string]entry)
	}
	return c
}

func (c *checker) shard(id string) *checkShard {
	return &c.shards[maphash.String(c.seed, id)%uint64(len(c.shards))]
}

// Accepted records a 202 for id, sent to recipient.
func (c *checker) Accepted(id string, recipient int) {
	sh := c.shard(id)
	sh.mu.Lock()
	e, ok := sh.m[id]
	if ok && e.accepted {
		sh.mu.Unlock()
		c.reusedIDs.Add(1)
		return
	}
	var wrong int
	if ok && int(e.recipient) != recipient {
		wrong = bits.OnesCount64(e.mask)
		e.mask = 0
	}
	e.recipient, e.accepted = int32(recipient), true
	sh.m[id] = e
	have := bits.OnesCount64(e.mask)
	sh.mu.Unlock()
	c.misrouted.Add(int64(wrong))
	c.accepted.Add(1)
	c.expected.Add(int64(c.conns))
	c.matched.Add(int64(have))
	c.owed[recipient].Add(int64(c.conns - have))
}

// Received records id arriving on connection slot of recipient, lat after
// it was sent (lat < 0: not measured).
func (c *checker) Received(id string, recipient, slot int, lat time.Duration) {
	now := time.Now().UnixNano()
	bit := uint64(1) << uint(slot)
	sh := c.shard(id)
	sh.mu.Lock()
	e, ok := sh.m[id]
	switch {
	case ok && int(e.recipient) != recipient:
		sh.mu.Unlock()
		c.misrouted.Add(1)
		return
	case ok && e.mask&bit != 0:
		sh.mu.Unlock()
		c.duplicates.Add(1)
		return
	}
	e.recipient = int32(recipient)
	e.mask |= bit
	sh.m[id] = e
	if lat >= 0 {
		sh.lat = append(sh.lat, int64(lat))
	}
	sh.mu.Unlock()
	c.receipts.Add(1)
	if e.accepted {
		c.matched.Add(1)
		c.owed[recipient].Add(-1)
	}
	for {
		last := c.lastRecv.Load()
		if now <= last || c.lastRecv.CompareAndSwap(last, now) {
			break
		}
	}
}

// Outstanding is the number of deliveries still owed.
func (c *checker) Outstanding() int64 { return c.expected.Load() - c.matched.Load() }

// OwedTo is the number of deliveries still owed to recipient.
func (c *checker) OwedTo(recipient int) int64 { return c.owed[recipient].Load() }

// checkResult is the end-of-run accounting.
type checkResult struct {
	Missing           int64    // accepted messages missing on at least one connection
	MissingDeliveries int64    // (message, connection) pairs missing
	MissingIDs        []string // up to 10, sorted
	Unexpected        int64    // received, never answered 202 to us
	Latencies         []int64  // sorted, ns
}

// Result walks every id. Call it once the senders and receivers are done.
func (c *checker) Result() checkResult {
	full := uint64(1)<<uint(c.conns) - 1
	if c.conns >= 64 {
		full = ^uint64(0)
	}
	var r checkResult
	var ids []string
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for id, e := range sh.m {
			switch {
			case !e.accepted:
				r.Unexpected++
			case e.mask != full:
				r.Missing++
				r.MissingDeliveries += int64(c.conns - bits.OnesCount64(e.mask))
				ids = append(ids, id)
			}
		}
		r.Latencies = append(r.Latencies, sh.lat...)
		sh.mu.Unlock()
	}
	slices.Sort(ids)
	r.MissingIDs = ids[:min(len(ids), 10)]
	slices.Sort(r.Latencies)
	return r
}

// statusCounts counts failed sends and requests by HTTP status (0: no answer).
type statusCounts struct {
	mu sync.Mutex
	m  map[string]int64
}

func (s *statusCounts) Add(key string) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[string]int64{}
	}
	s.m[key]++
	s.mu.Unlock()
}

func (s *statusCounts) AddStatus(status int) {
	if status == 0 {
		s.Add("transport")
		return
	}
	s.Add(strconv.Itoa(status))
}

func (s *statusCounts) Snapshot() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.m))
	for k, v := range s.m {
		out[k] = v
	}
	return out
}

func (s *statusCounts) Total() int64 {
	var n int64
	for _, v := range s.Snapshot() {
		n += v
	}
	return n
}
