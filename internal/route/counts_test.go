package route

import (
	"testing"
	"time"
)

// A remembered count lets sends through only while fresh and below half the
// cap, counting each; otherwise the store must be read.
func TestQueueCountsRoomFor(t *testing.T) {
	var q queueCounts
	now := time.Now()
	if q.roomFor("bob", 10, 0, 0, now) {
		t.Fatal("room without any count read")
	}
	q.read("bob", 2, 0, 0, now)                                               // 2 pending + this send = 3
	if !q.roomFor("bob", 10, 0, 0, now) || !q.roomFor("bob", 10, 0, 0, now) { // 4, 5
		t.Fatal("no room far below the cap")
	}
	if q.roomFor("bob", 10, 0, 0, now) {
		t.Fatal("room at half the cap: the store must be read")
	}
	q.read("carol", 0, 0, 0, now)
	if !q.roomFor("carol", 10, 0, 0, now.Add(countFresh-time.Millisecond)) {
		t.Fatal("no room from a fresh count")
	}
	if q.roomFor("carol", 10, 0, 0, now.Add(countFresh)) {
		t.Fatal("room from a stale count")
	}
	q.read("dave", 0, 0, 0, now)
	if q.roomFor("dave", 1, 0, 0, now) {
		t.Fatal("room under a cap of 1 without reading the store")
	}
}

// With a cap on bytes too, a remembered count lets a send through only
// while the bytes with this send stay within half that cap, counting them;
// either cap alone sends the next send to the store.
func TestQueueCountsRoomForBytes(t *testing.T) {
	var q queueCounts
	now := time.Now()
	q.read("alice", 0, 100, 50, now)               // 150 bytes with this send
	if !q.roomFor("alice", 1000, 1000, 350, now) { // 500: half the byte cap exactly
		t.Fatal("no room within half the byte cap")
	}
	if q.roomFor("alice", 1000, 1000, 1, now) {
		t.Fatal("room past half the byte cap: the store must be read")
	}
	q.read("erin", 0, 0, 10, now)
	if !q.roomFor("erin", 0, 100, 40, now) { // no message cap: bytes only
		t.Fatal("no room far below the byte cap")
	}
	if q.roomFor("erin", 0, 100, 1, now) {
		t.Fatal("room past half the byte cap with no message cap")
	}
	q.read("frank", 5, 0, 1, now) // 6 messages
	if q.roomFor("frank", 12, 1<<30, 1, now) {
		t.Fatal("room at half the message cap although far below the byte cap")
	}
}
