package realtime

import (
	"bufio"
	"context"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/web"
)

// A session is one WebSocket connection. An idle session has no goroutine
// and no buffer: the poller wakes a reader when the client sends something
// (reader.go), a writer goroutine runs only while frames wait to be
// written (writer.go, backlog.go), and one timer, whose function never
// waits for a write, sends the pings and ends what outlives its deadline
// (keepalive.go).
//
// Everything the server writes goes through the one writer, from the
// session's outbox (outbox.go): control frames and error events first
// (urgent), then the backlog, then live message frames. What waits to be
// written, or is being written, counts against the session's budget
// (Options.SendBufferBytes bytes and Options.SendQueue live frames): a
// client that cannot keep up is closed with 1013 and gets its messages,
// still stored, as backlog on its next connection. Each write must
// complete within Options.WriteTimeout from when it started.
//
// This file holds the session's life: its states, opening (presence, the
// first backlog) and closing.
type session struct {
	srv  *Server
	id   string
	user string
	ip   string
	// out holds what is to be written; it has its own lock.
	out *outbox
	// pending, when not nil, holds bytes the upgrade read past the
	// handshake (rare); the first read takes them.
	pending *bufio.Reader

	// mu guards what follows.
	mu sync.Mutex
	// state is where the session is in its life; it moves only by
	// moveLocked.
	state sessionState
	// conn is set by opened (the move to open, or a session closed
	// during the upgrade): nothing writes or closes it before.
	conn net.Conn
	// counted is set while the session counts in WSConnections (from
	// the end of its first backlog).
	counted bool
	// traces remembers, when tracing is on, the write span of the live
	// frames sent and not yet acknowledged, so that the ack joins each
	// message's trace (at most maxTraced).
	traces map[string]trace.SpanContext
	// watch is the poller's registration (nil: a goroutine reads).
	watch *watch
	// timer is the session's one timer: it fires at the earliest of
	// nextPing, pongBy (while a ping is unanswered), expires (until the
	// session closes) and closeBy.
	timer *time.Timer
	// ping is the state of the last ping, pingSeq its number and
	// pingData its payload, which the client's pong must echo.
	ping     pingState
	pingSeq  uint64
	pingData [8]byte
	nextPing time.Time
	pongBy   time.Time
	// closeBy is when a closing session ends if the client has not
	// answered its close frame.
	closeBy time.Time

	// ctx is cancelled when the session closes: a store call on its
	// behalf returns at once.
	ctx    context.Context
	cancel context.CancelFunc
	// expires is when the session's token expires, leeway included.
	expires time.Time
	// frames limits the client's frames (nil: no limit).
	frames *rate.Limiter

	// sendMu guards the sends in flight (send.go): those not answered
	// yet, and, while reading is paused for them, what resumes it.
	sendMu   sync.Mutex
	inFlight int
	resume   func()
}

// sessionState is where a session is in its life. It only moves forward:
// opening, open, closing, closed, possibly skipping steps.
type sessionState uint8

const (
	// stateOpening: admitted (in the hub, counted against the caps),
	// the upgrade under way, no connection. Live frames are queued (the
	// upgrade's goroutine holds the writer's role, to send the backlog
	// first); a close queues the close frame. Nothing is read or
	// written, no timer runs. Moves on to open when the connection
	// opens (opened), or to closing or closed when closed or ended
	// during the upgrade (then opened writes the close frame and waits
	// for its answer, or closes the connection).
	stateOpening sessionState = iota
	// stateOpen: the connection is open: frames are read and handled,
	// frames are queued and written, pings are sent, the token's expiry
	// is enforced. Moves on with a close (closing) or an end (closed).
	stateOpen
	// stateClosing: the close frame is queued, after the urgent frames,
	// and nothing is queued after it; live frames waiting were dropped.
	// The client's frames are read for its answer to the close, and no
	// message is handled; the session's context is cancelled (a store
	// call for it returns); no ping is sent. Moves on (closed) when the
	// client answers the close, when the close frame is written if the
	// close waits for no answer, at closeBy (closeWait after the close),
	// or when a read or write fails.
	stateClosing
	// stateClosed: over. The connection is closed, the outbox dropped,
	// the timer stopped, the session out of the hub and, soon after, of
	// presence and the counts. Final.
	stateClosed
)

var stateNames = [...]string{"opening", "open", "closing", "closed"}

func (st sessionState) String() string {
	if int(st) < len(stateNames) {
		return stateNames[st]
	}
	return "state(" + strconv.Itoa(int(st)) + ")"
}

// moveLocked moves the session to state to, if that is a move forward (to
// a later state), and reports whether it did (ss.mu held). It is the only
// writer of ss.state, and its callers do what each move brings: opened
// (to open), closeWith (to closing), end (to closed).
func (ss *session) moveLocked(to sessionState) bool {
	if to <= ss.state {
		return false
	}
	ss.state = to
	return true
}

// isClosing reports whether the session is closing or closed.
func (ss *session) isClosing() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.state >= stateClosing
}

// closeWait is how long the server waits for the client's answer to its
// close frame before it drops the connection.
const closeWait = 5 * time.Second

// newSession returns the session, opening, of user connecting from ip
// with a token that expires at expires (zero: never). Its context carries
// ctx's values, not its cancellation.
func (s *Server) newSession(ctx context.Context, user, ip string, expires time.Time) *session {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ss := &session{
		srv:    s,
		id:     strconv.FormatUint(s.connSeq.Add(1), 36),
		user:   user,
		ip:     ip,
		ctx:    sctx,
		cancel: cancel,
		out:    newOutbox(s.o.SendBufferBytes, s.o.SendQueue),
	}
	if !expires.IsZero() {
		ss.expires = expires.Add(s.o.Leeway)
	}
	if s.o.AckRate > 0 {
		ss.frames = rate.NewLimiter(rate.Limit(s.o.AckRate), max(s.o.AckBurst, 1))
	}
	return ss
}

func (ss *session) presenceConn() presence.Conn {
	return presence.Conn{User: ss.user, Instance: ss.srv.o.Instance, ID: ss.id}
}

// opened gives the session its connection, once the upgrade is done, and
// runs it (start); a session closed during the upgrade is closed on the
// connection instead (the close frame of its close, then the client's
// answer), and one ended meanwhile has the connection closed.
func (ss *session) opened(conn net.Conn) {
	ss.mu.Lock()
	ss.conn = conn
	prev := ss.state
	switch prev {
	case stateOpening:
		ss.moveLocked(stateOpen)
	case stateClosing:
		now := time.Now()
		ss.closeBy = now.Add(closeWait)
		ss.scheduleLocked(now)
	}
	ss.mu.Unlock()
	switch prev {
	case stateClosed:
		_ = conn.Close()
	case stateClosing:
		// The close frame (the writer's role is held from the start).
		go ss.writeLoop()
		ss.startReading()
	default:
		ss.start()
	}
}

// start runs on the upgrade's goroutine once the connection is open: it
// registers the session in presence, starts reading, then, as the
// session's writer, sends the backlog and what was queued meanwhile. A
// session that presence cannot register gets an error event and a 1013
// close.
func (ss *session) start() {
	s := ss.srv
	actx, acancel := context.WithTimeout(ss.ctx, s.o.WriteTimeout)
	err := s.presence.Add(actx, ss.presenceConn())
	acancel()
	if err != nil {
		s.log.Warn("presence add failed", "err", err)
		ss.send(encodeError(web.CodeBackendUnavailable, "presence is unavailable; reconnect later"))
		ss.stop(ws.StatusCode(1013), "presence unavailable")
		ss.startReading()
		ss.writeLoop()
		return
	}
	ss.mu.Lock()
	now := time.Now()
	if s.o.PingInterval > 0 {
		ss.nextPing = now.Add(s.o.PingInterval)
	}
	// The session lasts as long as its token (expires): the client
	// reconnects with a fresh one.
	ss.scheduleLocked(now)
	ss.mu.Unlock()
	ss.startReading()
	// The writer's role is this goroutine's (held from the start): the
	// backlog first, then what was queued meanwhile.
	if ss.backlogPass() {
		// Counted once registered everywhere and its backlog sent: from
		// now on a message routed to it is written live.
		ss.mu.Lock()
		if ss.state != stateClosed && s.m != nil {
			s.m.WSConnections.Inc()
			ss.counted = true
		}
		ss.mu.Unlock()
	}
	ss.writeLoop()
}

// stop closes the session with a close frame carrying code and reason,
// then waits for the client's answer (at most closeWait). The first close
// wins: it reports whether this one did. It never waits.
func (ss *session) stop(code ws.StatusCode, reason string) bool {
	return ss.closeWith(code, reason, false, "")
}

// abort closes the session with a close frame carrying code and reason,
// and ends it once that is written: no answer is waited for. It reports
// whether the session was not closing yet.
func (ss *session) abort(code ws.StatusCode, reason string) bool {
	return ss.closeWith(code, reason, true, "")
}

// closeWith moves the session to closing (see stop and abort); when it
// does, the close counts under the reason dropped of WSDropped, if not "".
func (ss *session) closeWith(code ws.StatusCode, reason string, endAfter bool, dropped string) bool {
	ss.mu.Lock()
	prev := ss.state
	if !ss.moveLocked(stateClosing) {
		ss.mu.Unlock()
		return false
	}
	if m := ss.srv.m; m != nil && dropped != "" {
		m.WSDropped.WithLabelValues(dropped).Inc()
	}
	wake := ss.out.Close(closeFrame(code, reason), endAfter)
	if prev == stateOpen { // else opened waits for the answer
		now := time.Now()
		ss.closeBy = now.Add(closeWait)
		ss.scheduleLocked(now)
	}
	ss.mu.Unlock()
	ss.cancel() // a store call for the session returns
	if wake {
		go ss.writeLoop()
	}
	return true
}

// end moves the session to closed: the connection is closed, without a
// close frame of its own (stop sends one first; a client that stopped
// reading could not take one), and the session unregistered. It is
// idempotent and does not block.
func (ss *session) end() {
	ss.mu.Lock()
	if !ss.moveLocked(stateClosed) {
		ss.mu.Unlock()
		return
	}
	ss.out.Drop()
	if ss.timer != nil {
		ss.timer.Stop()
	}
	w, conn := ss.watch, ss.conn
	ss.mu.Unlock()
	ss.cancel()
	s := ss.srv
	s.hub.remove(ss)
	if w != nil {
		w.stop()
	}
	if conn != nil { // else opened closes it
		_ = conn.Close()
	}
	go ss.unregister()
}

// unregister removes the session from presence and the counts.
func (ss *session) unregister() {
	s := ss.srv
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := s.presence.Remove(rctx, ss.presenceConn()); err != nil {
		s.log.Warn("presence remove failed", "err", err)
	}
	rcancel()
	ss.mu.Lock()
	counted := ss.counted
	ss.mu.Unlock()
	if counted {
		s.m.WSConnections.Dec()
	}
	s.release(ss.ip)
	s.sessions.Done()
}
