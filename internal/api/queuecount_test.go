package api

import (
	"testing"
	"time"
)

// A remembered count lets sends through only while fresh and below half the
// cap, counting each; otherwise the store must be read.
func TestQueueCountsRoomFor(t *testing.T) {
	var q queueCounts
	now := time.Now()
	if q.roomFor("bob", 10, now) {
		t.Fatal("room without any count read")
	}
	q.read("bob", 2, now)                                         // 2 pending + this send = 3
	if !q.roomFor("bob", 10, now) || !q.roomFor("bob", 10, now) { // 4, 5
		t.Fatal("no room far below the cap")
	}
	if q.roomFor("bob", 10, now) {
		t.Fatal("room at half the cap: the store must be read")
	}
	q.read("carol", 0, now)
	if !q.roomFor("carol", 10, now.Add(countFresh-time.Millisecond)) {
		t.Fatal("no room from a fresh count")
	}
	if q.roomFor("carol", 10, now.Add(countFresh)) {
		t.Fatal("room from a stale count")
	}
	q.read("dave", 0, now)
	if q.roomFor("dave", 1, now) {
		t.Fatal("room under a cap of 1 without reading the store")
	}
}
