package realtime

import (
	"context"
	"net"

	"github.com/gobwas/ws"

	"github.com/go-routing-service/routingservice/internal/web"
)

// This file holds the backlog: the user's stored messages, sent by the
// session's writer oldest first when the session opens and again when a
// resync asks for it. The promises: a page is read only when the send
// budget has room for its frames, and counts in the budget until they are
// written; a message a pass sends is not written again live, nor by a
// pass that begins within sentWindow of that pass's end (the outbox
// keeps their ids); a message whose frame cannot be encoded is skipped
// and logged by id (never its payload); a store that fails closes the
// session with 1013 after an error event.

// frameOverhead bounds what a message frame holds besides its base64
// payload: the frame header and the envelope's other fields (id, sender
// and recipient URNs, type, time) in JSON.
const frameOverhead = 2 << 10

// messageFrameBound is an upper bound of the size of the frame of a
// message whose payload has n bytes.
func messageFrameBound(n int) int64 {
	return int64(4*((n+2)/3) + frameOverhead)
}

// backlogPass sends the backlog (see sendBacklog) with the outbox's rule
// for live frames that do not fit during a pass in force, and reports
// whether the whole backlog was sent.
func (ss *session) backlogPass() bool {
	ss.out.BeginBacklog()
	ok := ss.sendBacklog()
	ss.out.EndBacklog()
	return ok
}

// backlogBytes bounds the payload bytes of the next backlog page (for
// Options.BacklogPage messages): the frames of a page within it fit in
// the room left in the session's budget. The store returns the first
// message whatever its size, and the budget always has room for one
// frame of the largest payload (config), so a page is never empty.
func (ss *session) backlogBytes() int {
	room, bounded := ss.out.Room()
	if !bounded {
		return 0
	}
	// A frame is at most 4/3 of its payload (base64) plus 4 bytes of
	// padding and the overhead.
	room -= int64(ss.srv.o.BacklogPage) * (frameOverhead + 4)
	return int(max(room*3/4, 1))
}

// sendBacklog sends the user's stored messages, oldest first, skipping
// those a recent pass sent (the client has them), and marks each one
// sent. It stops, reporting false, when the session closes or the store
// fails.
func (ss *session) sendBacklog() bool {
	s := ss.srv
	cursor := ""
	for {
		qctx, cancel := context.WithTimeout(ss.ctx, s.o.WriteTimeout)
		page, err := s.store.PendingWithin(qctx, ss.user, cursor, s.o.BacklogPage, ss.backlogBytes())
		cancel()
		if ss.isClosing() {
			return false
		}
		if err != nil {
			s.log.Warn("backlog read failed", "err", err)
			ss.send(encodeError(web.CodeBackendUnavailable, "store is unavailable; reconnect later"))
			ss.stop(ws.StatusCode(1013), "store unavailable")
			return false
		}
		// held counts what the page still holds: each envelope at the
		// bound of its frame until encoded, then its frame until written.
		var held int64
		for _, env := range page.Envelopes {
			held += messageFrameBound(len(env.Payload))
		}
		ss.out.Hold(held)
		// unheld takes n bytes the page no longer holds off the budget.
		unheld := func(n int64) {
			held -= n
			ss.out.Release(n)
		}
		var chunk net.Buffers
		var chunkSize int64
		for i, env := range page.Envelopes {
			page.Envelopes[i] = nil // the frame replaces it
			bound := messageFrameBound(len(env.Payload))
			if ss.out.SeenRecently(env.ID) {
				unheld(bound)
				continue
			}
			data, err := encodeMessage(env)
			if err != nil {
				s.log.Error("message frame encode failed; backlog message skipped", "id", env.ID, "err", err)
				unheld(bound)
				continue
			}
			unheld(bound - int64(len(data)))
			chunk = append(chunk, data)
			chunkSize += int64(len(data))
			ss.out.MarkSent(env.ID)
			if chunkSize >= writeChunk {
				if !ss.writeBacklog(chunk) {
					ss.out.Release(held)
					return false
				}
				unheld(chunkSize)
				clear(chunk)
				chunk, chunkSize = chunk[:0], 0
			}
		}
		if len(chunk) > 0 {
			if !ss.writeBacklog(chunk) {
				ss.out.Release(held)
				return false
			}
			unheld(chunkSize)
		}
		if page.Next == "" {
			return true
		}
		cursor = page.Next
	}
}

// writeBacklog writes backlog frames, after the urgent frames waiting; it
// reports false, writing nothing, once the session is closing.
func (ss *session) writeBacklog(bufs net.Buffers) bool {
	if urgent, size := ss.out.TakeUrgent(); len(urgent) > 0 {
		ss.writeUrgent(urgent, size)
	}
	if ss.isClosing() {
		return false
	}
	n := len(bufs)
	if !ss.writeBuffers(bufs) {
		return false
	}
	if m := ss.srv.m; m != nil {
		m.WSMessagesSent.WithLabelValues("backlog").Add(float64(n))
	}
	return true
}
