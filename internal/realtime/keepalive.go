package realtime

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/gobwas/ws"
)

// This file holds the session's one timer: the pings and the deadlines.
// The promises: while the session is open a ping is sent each
// Options.PingInterval after the last one was answered, with a random
// payload; only a pong that echoes it answers it, and an unanswered ping
// ends the session Options.PongTimeout after it was written
// (pong_timeout); an open session is closed with 1008 when its token
// expires (token_expired); a closing session ends at closeBy if the
// client has not answered its close. The timer's function never waits
// for a write: a ping is queued, and written by the timer's goroutine
// only when no writer runs. An idle session holds the timer only, no
// goroutine.

// pingState is where the session's last ping stands.
type pingState uint8

const (
	pingNone    pingState = iota // none unanswered: the next is due at nextPing
	pingQueued                   // queued, not yet written
	pingWritten                  // written at pongBy - PongTimeout, unanswered
)

// scheduleLocked sets the session's timer to its earliest deadline (ss.mu
// held).
func (ss *session) scheduleLocked(now time.Time) {
	if ss.state == stateClosed {
		return
	}
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	earliest(ss.closeBy)
	if ss.ping == pingWritten {
		earliest(ss.pongBy)
	}
	if ss.state < stateClosing {
		earliest(ss.expires)
		if ss.ping == pingNone {
			earliest(ss.nextPing)
		}
	}
	switch {
	case next.IsZero():
		if ss.timer != nil {
			ss.timer.Stop()
		}
	case ss.timer == nil:
		ss.timer = time.AfterFunc(next.Sub(now), ss.tick)
	default:
		ss.timer.Reset(next.Sub(now))
	}
}

// tick is the session's timer function: it acts on the deadlines passed
// (the close's answer, the pong, the token, the next ping) and sets the
// timer to the next one.
func (ss *session) tick() {
	s := ss.srv
	now := time.Now()
	ss.mu.Lock()
	if ss.state == stateClosed {
		ss.mu.Unlock()
		return
	}
	open := ss.state < stateClosing
	switch {
	case !ss.closeBy.IsZero() && !now.Before(ss.closeBy):
		ss.mu.Unlock()
		ss.end()
		return
	case ss.ping == pingWritten && !now.Before(ss.pongBy):
		ss.mu.Unlock()
		if s.m != nil {
			s.m.WSDropped.WithLabelValues("pong_timeout").Inc()
		}
		ss.end()
		return
	case open && !ss.expires.IsZero() && !now.Before(ss.expires):
		ss.mu.Unlock()
		ss.closeWith(ws.StatusPolicyViolation, "token expired", false, "token_expired")
		return
	}
	write := false
	if open && ss.ping == pingNone && !ss.nextPing.IsZero() && !now.Before(ss.nextPing) {
		ss.ping, ss.nextPing = pingQueued, time.Time{}
		ss.pingSeq++
		binary.LittleEndian.PutUint64(ss.pingData[:], rand.Uint64())
		write = ss.out.Ping(serverFrame(ws.OpPing, ss.pingData[:]), ss.pingSeq)
	}
	ss.scheduleLocked(now)
	ss.mu.Unlock()
	if write {
		ss.writeLoop()
	}
}

// pingWritten starts the pong deadline of ping number seq, written now,
// if it is the session's unanswered ping.
func (ss *session) pingWritten(seq uint64) {
	now := time.Now()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.state == stateClosed || seq != ss.pingSeq || ss.ping != pingQueued {
		return
	}
	ss.ping, ss.pongBy = pingWritten, now.Add(ss.srv.o.PongTimeout)
	ss.scheduleLocked(now)
}

// pongReceived takes the client's pong: one that echoes the unanswered
// ping clears its deadline, and the next ping is due a ping interval from
// now; any other pong changes nothing.
func (ss *session) pongReceived(payload []byte) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.state == stateClosed || ss.ping == pingNone || !bytes.Equal(payload, ss.pingData[:]) {
		return
	}
	// (A ping still marked queued was written: its payload is random,
	// only a client that read it can echo it.)
	now := time.Now()
	ss.ping, ss.pongBy = pingNone, time.Time{}
	ss.nextPing = now.Add(ss.srv.o.PingInterval)
	ss.scheduleLocked(now)
}
