// Package realtime serves the WebSocket endpoint GET /v1/connect: each
// connection gets its user's stored backlog, oldest first, then live messages
// as they arrive on this instance's delivery subscription (or in process from
// the pipeline). It keeps the presence registry up to date.
package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// Store is what realtime needs of the store.
type Store interface {
	Pending(ctx context.Context, recipient, cursor string, limit int) (store.Page, error)
	Ack(ctx context.Context, recipient string, ids []string) (int, error)
}

// Receiver receives this instance's delivery events.
type Receiver interface {
	ReceiveDelivery(ctx context.Context, instance string, h bus.Handler) error
}

// Authenticate verifies a token and returns the caller's URN (its sub) and
// when the token expires.
type Authenticate func(token string) (subject string, expires time.Time, err error)

// Options configures the realtime server. A zero limit is no limit.
type Options struct {
	Instance string
	// AllowedOrigins are origin patterns (scheme://host[:port], "*" for
	// any) accepted besides the same host, checked by the WebSocket library.
	AllowedOrigins []string
	// AllowedHosts are the host names a browser (an upgrade with an Origin
	// header) may connect by; "*" for any.
	AllowedHosts []string
	// TrustedProxies are the peers whose X-Forwarded-For names the client.
	TrustedProxies []netip.Prefix
	// Leeway is added to a token's expiry before its session is closed.
	Leeway time.Duration
	// MaxConns caps the connections of this instance, MaxConnsPerIP those
	// of one client address (an IPv6 client is its /64).
	MaxConns      int
	MaxConnsPerIP int
	// Connection attempts per second and at once, per client address and
	// per user (after authentication).
	ConnectRatePerIP    float64
	ConnectBurstPerIP   int
	ConnectRatePerUser  float64
	ConnectBurstPerUser int
	// Client frames per second and at once, per connection.
	AckRate  float64
	AckBurst int

	MaxFrameBytes   int64
	PingInterval    time.Duration
	PongTimeout     time.Duration
	WriteTimeout    time.Duration
	SendQueue       int
	BacklogPage     int
	MaxConnsPerUser int
	Heartbeat       time.Duration
	Logger          *slog.Logger
	Metrics         *telemetry.Metrics
	// TracerProvider, when set, traces the WebSocket upgrade, each live
	// frame written under its message's trace, and each ack.
	TracerProvider trace.TracerProvider
}

// Server is the realtime role of one instance.
type Server struct {
	o        Options
	store    Store
	presence presence.Presence
	auth     Authenticate
	// Connect rate limiters, nil without a limit.
	ipRate, userRate *web.Limiter
	hub              *hub
	log              *slog.Logger
	m                *telemetry.Metrics
	connSeq          atomic.Uint64
	sessions         sync.WaitGroup
	tracer           trace.Tracer // nil when tracing is off
	// mu orders connection admission against Shutdown: once closing is
	// set, no session is added (to the hub or to sessions). It guards the
	// connection counts too.
	mu      sync.Mutex
	closing bool
	open    int
	perIP   map[string]int
}

// New returns a realtime server.
func New(o Options, st Store, pr presence.Presence, authenticate Authenticate) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Server{o: o, store: st, presence: pr, auth: authenticate, hub: newHub(), log: o.Logger, m: o.Metrics,
		ipRate:   web.NewLimiter(o.ConnectRatePerIP, o.ConnectBurstPerIP),
		userRate: web.NewLimiter(o.ConnectRatePerUser, o.ConnectBurstPerUser),
		perIP:    map[string]int{},
		tracer:   telemetry.Tracer(o.TracerProvider, "realtime"),
	}
}

// Router is what Mount needs of an HTTP router: exact method and path routes.
type Router interface {
	HandleFunc(method, path string, f http.HandlerFunc)
}

// Mount adds GET /v1/connect to rt.
func (s *Server) Mount(rt Router) {
	rt.HandleFunc(http.MethodGet, "/v1/connect", s.connect)
}

// Deliver hands env to this instance's connections of its recipient. It
// never blocks. The frames written carry ctx's trace.
func (s *Server) Deliver(ctx context.Context, env *envelope.Envelope) {
	var sc trace.SpanContext
	if s.tracer != nil {
		sc = trace.SpanContextFromContext(ctx)
	}
	if _, err := s.hub.deliver(env, sc); err != nil {
		s.log.ErrorContext(ctx, "message frame encode failed; not delivered live", "id", env.ID, "err", err)
	}
}

// Run consumes this instance's delivery subscription and refreshes presence
// until ctx is done.
func (s *Server) Run(ctx context.Context, rcv Receiver) error {
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		s.heartbeat(ctx)
	}()
	err := rcv.ReceiveDelivery(ctx, s.o.Instance, func(ctx context.Context, m *bus.Message) error {
		var env envelope.Envelope
		if err := envelope.Unmarshal(m.Data, &env); err != nil {
			return fmt.Errorf("%w: %v", bus.ErrPermanent, err)
		}
		s.Deliver(ctx, &env)
		return nil
	})
	<-hbDone
	return err
}

// Shutdown closes every connection (going away) and waits for their
// sessions to end, or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	for _, ss := range s.hub.all() {
		ss.stop(websocket.StatusGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	var upgrade trace.Span
	if s.tracer != nil {
		// The upgrade's span ends once the connection is open (or
		// refused): a session is not a request.
		var ctx context.Context
		ctx, upgrade = s.startUpgrade(r)
		r = r.WithContext(ctx)
		sw := &statusRecorder{ResponseWriter: w}
		w = sw
		defer func() { endUpgrade(upgrade, sw.status) }()
	}
	ip := s.clientAddr(r)
	if !s.allow(w, s.ipRate, ip, "too many connection attempts from this address") {
		return
	}
	if !s.hostAllowed(r) {
		web.WriteError(w, web.Errorf(http.StatusForbidden, web.CodeOriginNotAllowed, "host not allowed"))
		return
	}
	tok := web.BearerToken(r, true)
	if tok == "" {
		web.WriteError(w, web.Errorf(http.StatusUnauthorized, web.CodeUnauthorized, "missing bearer token"))
		return
	}
	user, exp, err := s.auth(tok)
	if err != nil {
		s.log.Debug("websocket token refused", "err", err)
		web.WriteError(w, web.Errorf(http.StatusUnauthorized, web.CodeUnauthorized, "invalid token"))
		return
	}
	if !s.allow(w, s.userRate, user, "too many connection attempts for this user") {
		return
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	ss := &session{
		srv:    s,
		id:     strconv.FormatUint(s.connSeq.Add(1), 36),
		user:   user,
		wake:   make(chan struct{}, 1),
		resync: make(chan struct{}, 1),
		done:   make(chan struct{}),
		ctx:    sctx,
		cancel: cancel,
	}
	if !exp.IsZero() {
		ss.expires = exp.Add(s.o.Leeway)
	}
	if s.o.AckRate > 0 {
		ss.frames = rate.NewLimiter(rate.Limit(s.o.AckRate), max(s.o.AckBurst, 1))
	}
	if !s.admit(w, ss, ip) {
		return
	}
	defer s.release(ip)
	defer s.sessions.Done()
	c, err := websocket.Accept(&jsonErrors{ResponseWriter: w}, r, &websocket.AcceptOptions{OriginPatterns: s.o.AllowedOrigins})
	if err != nil {
		s.hub.remove(ss)
		return // Accept wrote the error response.
	}
	c.SetReadLimit(s.o.MaxFrameBytes + 1)
	ss.conn = c
	if upgrade != nil {
		endUpgrade(upgrade, http.StatusSwitchingProtocols)
		upgrade = nil
	}
	ss.run()
}

// allow takes a token of key's bucket of l, or writes a 429 and returns false.
func (s *Server) allow(w http.ResponseWriter, l *web.Limiter, key, message string) bool {
	if l == nil {
		return true
	}
	ok, wait := l.Allow(key, time.Now())
	if !ok {
		web.WriteError(w, &web.Error{Status: http.StatusTooManyRequests, Code: web.CodeRateLimited,
			Message: message, RetryAfter: max(1, int((wait+time.Second-1)/time.Second))})
	}
	return ok
}

// admit registers ss under the connection caps, or writes the refusal and
// returns false. After true the caller must call s.sessions.Done and
// s.release(ip).
func (s *Server) admit(w http.ResponseWriter, ss *session, ip string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var refusal *web.Error
	switch {
	case s.closing:
		refusal = &web.Error{Status: http.StatusServiceUnavailable, Code: web.CodeBackendUnavailable,
			Message: "server shutting down", RetryAfter: 1}
	case s.o.MaxConns > 0 && s.open >= s.o.MaxConns:
		refusal = &web.Error{Status: http.StatusServiceUnavailable, Code: web.CodeBackendUnavailable,
			Message: "this instance is at its connection limit", RetryAfter: 5}
	case s.o.MaxConnsPerIP > 0 && s.perIP[ip] >= s.o.MaxConnsPerIP:
		refusal = &web.Error{Status: http.StatusTooManyRequests, Code: web.CodeRateLimited,
			Message: "too many connections from this address", RetryAfter: 5}
	case !s.hub.add(ss, s.o.MaxConnsPerUser):
		refusal = &web.Error{Status: http.StatusTooManyRequests, Code: web.CodeRateLimited,
			Message: "too many connections for this user", RetryAfter: 5}
	}
	if refusal != nil {
		web.WriteError(w, refusal)
		return false
	}
	s.open++
	s.perIP[ip]++
	s.sessions.Add(1)
	return true
}

func (s *Server) release(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open--
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
}

// jsonErrors turns the WebSocket library's plain-text refusal of an origin
// into the service's JSON error.
type jsonErrors struct {
	http.ResponseWriter
	failed bool
}

func (j *jsonErrors) WriteHeader(status int) {
	if status != http.StatusForbidden {
		j.ResponseWriter.WriteHeader(status)
		return
	}
	j.failed = true
	web.WriteError(j.ResponseWriter, web.Errorf(status, web.CodeOriginNotAllowed, "origin not allowed"))
}

func (j *jsonErrors) Write(b []byte) (int, error) {
	if j.failed {
		return len(b), nil
	}
	return j.ResponseWriter.Write(b)
}

// Unwrap lets the WebSocket library reach the connection to hijack.
func (j *jsonErrors) Unwrap() http.ResponseWriter { return j.ResponseWriter }

// session is one WebSocket connection.
type session struct {
	srv  *Server
	id   string
	user string
	conn *websocket.Conn
	// queue holds live frames not yet written (at most SendQueue); it
	// takes memory only while it holds frames. wake signals the writer.
	mu    sync.Mutex
	queue []frame
	wake  chan struct{}
	// resync asks the writer to send the backlog again (live events may
	// have missed this connection while presence had lost it).
	resync chan struct{}

	// ctx is cancelled when the session stops, so that a blocked write
	// returns at once.
	ctx    context.Context
	cancel context.CancelFunc

	stopOnce sync.Once
	done     chan struct{}
	// traces remembers, when tracing is on, the write span of the live
	// frames sent and not yet acknowledged, so that the ack joins each
	// message's trace (at most maxTraced). Owned by the writer and the
	// reader: guarded by mu.
	traces map[string]trace.SpanContext

	// unresponsive is set when the client cannot take a close handshake
	// (it stopped reading): the connection is dropped without one.
	unresponsive bool
	closeCode    websocket.StatusCode
	closeReason  string
	// expires is when the session's token expires, leeway included.
	expires time.Time
	// frames limits the client's frames (nil: no limit).
	frames *rate.Limiter
}

func (ss *session) presenceConn(instance string) presence.Conn {
	return presence.Conn{User: ss.user, Instance: instance, ID: ss.id}
}

// enqueue queues f without blocking; a full queue stops the session (its
// messages stay in the store for the next connection).
func (ss *session) enqueue(f frame) {
	ss.mu.Lock()
	full := len(ss.queue) >= ss.srv.o.SendQueue
	if !full {
		ss.queue = append(ss.queue, f)
	}
	ss.mu.Unlock()
	if full {
		ss.drop(websocket.StatusTryAgainLater, "slow consumer")
		if ss.srv.m != nil {
			ss.srv.m.WSDropped.WithLabelValues("slow_consumer").Inc()
		}
		return
	}
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// take returns the queued frames and empties the queue, handing back spare
// (a drained slice of an earlier take) for reuse.
func (ss *session) take(spare []frame) []frame {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := ss.queue
	if len(out) == 0 {
		return spare[:0]
	}
	clear(spare)
	ss.queue = spare[:0]
	return out
}

// stop ends the session with a close status (the first one wins).
func (ss *session) stop(code websocket.StatusCode, reason string) { ss.end(code, reason, false) }

// drop ends the session of a client that stopped reading: no close
// handshake is waited for.
func (ss *session) drop(code websocket.StatusCode, reason string) { ss.end(code, reason, true) }

func (ss *session) end(code websocket.StatusCode, reason string, unresponsive bool) {
	ss.stopOnce.Do(func() {
		ss.closeCode, ss.closeReason, ss.unresponsive = code, reason, unresponsive
		close(ss.done)
		ss.cancel()
	})
}

// close closes the connection with the session's close status.
func (ss *session) close() {
	if ss.unresponsive {
		_ = ss.conn.CloseNow()
		return
	}
	_ = ss.conn.Close(ss.closeCode, ss.closeReason)
}

func (ss *session) run() {
	s := ss.srv
	ctx := ss.ctx
	pc := ss.presenceConn(s.o.Instance)
	defer func() {
		s.hub.remove(ss)
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := s.presence.Remove(rctx, pc); err != nil {
			s.log.Warn("presence remove failed", "err", err)
		}
		rcancel()
		ss.stop(websocket.StatusNormalClosure, "")
		ss.close()
	}()
	actx, acancel := context.WithTimeout(ctx, s.o.WriteTimeout)
	err := s.presence.Add(actx, pc)
	acancel()
	if err != nil {
		s.log.Warn("presence add failed", "err", err)
		ss.writeError(ctx, web.CodeBackendUnavailable, "presence is unavailable; reconnect later")
		ss.stop(websocket.StatusTryAgainLater, "presence unavailable")
		return
	}
	// Counted once registered everywhere: a message routed from now on reaches it.
	if s.m != nil {
		s.m.WSConnections.Inc()
		defer s.m.WSConnections.Dec()
	}
	// The session lasts as long as its token: the client reconnects with
	// a fresh one.
	if !ss.expires.IsZero() {
		t := time.AfterFunc(time.Until(ss.expires), func() {
			if s.m != nil {
				s.m.WSDropped.WithLabelValues("token_expired").Inc()
			}
			ss.stop(websocket.StatusPolicyViolation, "token expired")
		})
		defer t.Stop()
	}

	var wg sync.WaitGroup
	wg.Add(2)
	// The reader runs until the connection closes, not until the session
	// stops, so that it can read the client's answer to our close frame
	// (and the client gets the close status).
	go func() { defer wg.Done(); ss.readLoop(context.WithoutCancel(ctx)) }()
	go func() { defer wg.Done(); ss.pingLoop(ctx) }()
	ss.writeLoop(ctx)
	ss.stop(websocket.StatusNormalClosure, "") // cancels ctx: the pinger returns
	ss.close()                                 // the reader returns
	wg.Wait()
}

// writeLoop sends the backlog, then live frames, until the session stops.
func (ss *session) writeLoop(ctx context.Context) {
	s := ss.srv
	sent, ok := ss.sendBacklog(ctx)
	if !ok {
		return
	}
	backlogDone := time.Now()
	var batch []frame
	for {
		select {
		case <-ss.done:
			return
		case <-ss.wake:
		case <-ss.resync:
			if sent, ok = ss.sendBacklog(ctx); !ok {
				return
			}
			backlogDone = time.Now()
		}
		batch = ss.take(batch)
		for _, f := range batch {
			if sent != nil {
				// A message stored while the backlog was read can arrive
				// live too: send it once.
				if _, dup := sent[f.id]; dup {
					continue
				}
			}
			var span trace.Span
			if s.tracer != nil && f.trace.IsValid() {
				_, span = s.tracer.Start(trace.ContextWithSpanContext(ctx, f.trace), "websocket write", trace.WithSpanKind(trace.SpanKindInternal))
				span.SetAttributes(telemetry.AttrMessageID.String(f.id))
				// Before the write: the client may ack at once.
				ss.remember(f.id, span.SpanContext())
			}
			ok := ss.write(ctx, f.data)
			if span != nil {
				if !ok {
					span.SetStatus(codes.Error, "write failed")
				}
				span.End()
			}
			if !ok {
				return
			}
			if s.m != nil {
				s.m.WSMessagesSent.WithLabelValues("live").Inc()
				if !f.accepted.IsZero() {
					s.m.DeliveryLatency.Observe(time.Since(f.accepted).Seconds())
				}
			}
		}
		if sent != nil && time.Since(backlogDone) > time.Minute {
			sent = nil
		}
		if len(batch) > 64 {
			batch = nil // do not keep a large buffer on an idle connection
		}
	}
}

func (ss *session) sendBacklog(ctx context.Context) (map[string]struct{}, bool) {
	s := ss.srv
	var sent map[string]struct{}
	cursor := ""
	for {
		select {
		case <-ss.done:
			return nil, false
		default:
		}
		qctx, cancel := context.WithTimeout(ctx, s.o.WriteTimeout)
		page, err := s.store.Pending(qctx, ss.user, cursor, s.o.BacklogPage)
		cancel()
		if err != nil {
			s.log.Warn("backlog read failed", "err", err)
			ss.writeError(ctx, web.CodeBackendUnavailable, "store is unavailable; reconnect later")
			ss.stop(websocket.StatusTryAgainLater, "store unavailable")
			return nil, false
		}
		for _, env := range page.Envelopes {
			data, err := encodeMessage(env)
			if err != nil {
				s.log.Error("message frame encode failed; backlog message skipped", "id", env.ID, "err", err)
				continue
			}
			if !ss.write(ctx, data) {
				return nil, false
			}
			if sent == nil {
				sent = make(map[string]struct{})
			}
			sent[env.ID] = struct{}{}
			if s.m != nil {
				s.m.WSMessagesSent.WithLabelValues("backlog").Inc()
			}
		}
		if page.Next == "" {
			return sent, true
		}
		cursor = page.Next
	}
}

func (ss *session) write(ctx context.Context, data []byte) bool {
	wctx, cancel := context.WithTimeout(ctx, ss.srv.o.WriteTimeout)
	err := ss.conn.Write(wctx, websocket.MessageText, data)
	cancel()
	if err != nil {
		// A timed-out write closes the connection, which may end the
		// session from the reader first: the timeout is still the reason.
		// Another failure counts only if nothing else ended the session.
		if ss.srv.m != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				ss.srv.m.WSDropped.WithLabelValues("write_timeout").Inc()
			} else {
				select {
				case <-ss.done:
				default:
					ss.srv.m.WSDropped.WithLabelValues("write_failed").Inc()
				}
			}
		}
		ss.stop(websocket.StatusGoingAway, "write failed")
		return false
	}
	return true
}

func (ss *session) writeError(ctx context.Context, code, message string) {
	b, _ := json.Marshal(errorFrame{Type: "error", Error: errorDetail{Code: code, Message: message}})
	wctx, cancel := context.WithTimeout(ctx, ss.srv.o.WriteTimeout)
	_ = ss.conn.Write(wctx, websocket.MessageText, b)
	cancel()
}

func (ss *session) pingLoop(ctx context.Context) {
	s := ss.srv
	t := time.NewTicker(s.o.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ss.done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, s.o.PongTimeout)
		err := ss.conn.Ping(pctx)
		cancel()
		if err != nil {
			if s.m != nil {
				s.m.WSDropped.WithLabelValues("pong_timeout").Inc()
			}
			ss.drop(websocket.StatusPolicyViolation, "pong timeout")
			return
		}
	}
}

// readLoop handles client frames: acks. It stops the session when the
// connection fails or closes.
func (ss *session) readLoop(ctx context.Context) {
	s := ss.srv
	for {
		typ, data, err := ss.readFrame(ctx)
		if errors.Is(err, errFrameTooBig) {
			if s.m != nil {
				s.m.WSDropped.WithLabelValues("frame_too_big").Inc()
			}
			ss.stop(websocket.StatusMessageTooBig, fmt.Sprintf("frame larger than %d bytes (realtime.max_frame_bytes)", s.o.MaxFrameBytes))
			return
		}
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
				if s.m != nil {
					s.m.WSDropped.WithLabelValues("frame_too_big").Inc()
				}
			}
			ss.stop(websocket.StatusNormalClosure, "")
			return
		}
		if ss.frames != nil && !ss.frames.Allow() {
			ss.writeError(ctx, web.CodeRateLimited, "too many frames; this one was not applied (ack again later)")
			continue
		}
		if typ != websocket.MessageText {
			ss.writeError(ctx, web.CodeBadRequest, "frames must be JSON text")
			continue
		}
		ids, code, msg := decodeClientFrame(data)
		if code != "" {
			ss.writeError(ctx, code, msg)
			continue
		}
		actx, cancel := context.WithTimeout(ctx, s.o.WriteTimeout)
		var span, del trace.Span
		if s.tracer != nil {
			actx, span = ss.startAck(actx, ids)
			actx, del = telemetry.Start(actx, s.tracer, "store delete", trace.SpanKindInternal)
		}
		n, err := s.store.Ack(actx, ss.user, ids)
		cancel()
		if span != nil {
			del.SetAttributes(telemetry.AttrCount.Int(n))
			telemetry.End(del, err)
			telemetry.End(span, err)
		}
		if err != nil {
			s.log.WarnContext(actx, "websocket ack failed", "err", err)
			ss.writeError(ctx, web.CodeBackendUnavailable, "store is unavailable; ack again later")
			continue
		}
		if s.m != nil {
			s.m.WSAcks.Inc()
			s.m.MessagesAcked.Add(float64(n))
		}
	}
}

var errFrameTooBig = errors.New("frame too big")

// readFrame reads one client frame, at most MaxFrameBytes long: a longer
// one is errFrameTooBig, for which the session closes with 1009 and a
// reason that states the limit. (The connection's own read limit, one byte
// higher, is only a backstop; its close reason is off by one.)
func (ss *session) readFrame(ctx context.Context) (websocket.MessageType, []byte, error) {
	typ, r, err := ss.conn.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	max := ss.srv.o.MaxFrameBytes
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return 0, nil, err
	}
	if int64(len(data)) > max {
		return 0, nil, errFrameTooBig
	}
	return typ, data, nil
}

// decodeClientFrame decodes a client text frame: the ids of a valid ack,
// or the error code and message to answer it with.
func decodeClientFrame(data []byte) (ids []string, code, msg string) {
	var in clientFrame
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, web.CodeBadJSON, "frame is not valid JSON of the expected shape"
	}
	if in.Type != "ack" {
		return nil, web.CodeBadRequest, "unknown frame type (expected \"ack\")"
	}
	if err := envelope.ValidateAckIDs(in.IDs); err != nil {
		return nil, web.CodeInvalidParameter, err.Error()
	}
	return in.IDs, "", ""
}

type clientFrame struct {
	Type string   `json:"type"`
	IDs  []string `json:"ids"`
}

type messageFrame struct {
	Type    string             `json:"type"`
	Message *envelope.Envelope `json:"message"`
}

type errorFrame struct {
	Type  string      `json:"type"`
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func encodeMessage(env *envelope.Envelope) ([]byte, error) {
	return json.Marshal(messageFrame{Type: "message", Message: env})
}
