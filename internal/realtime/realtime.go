// Package realtime serves the WebSocket endpoint GET /v1/connect: each
// connection gets its user's stored backlog, oldest first, then live messages
// as they arrive on this instance's delivery subscription (or in process from
// the pipeline). It keeps the presence registry up to date.
package realtime

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// Store is what realtime needs of the store.
type Store interface {
	// PendingWithin reads a page of the backlog: at most limit
	// envelopes, within maxBytes of payload (the first one whatever its
	// size; maxBytes <= 0: no bound).
	PendingWithin(ctx context.Context, recipient, cursor string, limit, maxBytes int) (store.Page, error)
	Ack(ctx context.Context, recipient string, ids []string) (int, error)
}

// Receiver receives this instance's delivery events.
type Receiver interface {
	ReceiveDelivery(ctx context.Context, instance string, h bus.Handler) error
}

// Authenticate verifies a token and returns the caller's URN (its sub) and
// when the token expires.
type Authenticate func(token string) (subject string, expires time.Time, err error)

// Options configures the realtime server: its Config (realtime.* of
// config.yaml; a zero limit is no limit) and what the rest of the
// instance gives it.
type Options struct {
	// Config holds the server's own keys; of them the listener's
	// (Listen, ReadHeaderTimeout, IdleTimeout) are the caller's to use,
	// and DeliveryConcurrency the bus's.
	Config

	Instance string
	// Leeway is added to a token's expiry before its session is closed.
	Leeway time.Duration
	// MaxPayloadBytes is the largest payload of a message (the API's
	// limit): backlog pages are sized so that they fit in SendBufferBytes.
	MaxPayloadBytes int
	// Heartbeat is how often the connections' presence is refreshed.
	Heartbeat time.Duration
	Logger    *slog.Logger
	Metrics   *telemetry.Metrics
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
	// Connect rate limiters, nil without a limit: ipRate counts the
	// attempts without a valid token per client address, userRate the
	// authenticated ones per user.
	ipRate, userRate *web.Limiter
	// proxies derives a request's client address.
	proxies web.Proxies
	// refusals counts refused upgrades by reason (nil without metrics).
	refusals *prometheus.CounterVec
	hub      *hub
	log      *slog.Logger
	m        *telemetry.Metrics
	connSeq  atomic.Uint64
	sessions sync.WaitGroup
	tracer   trace.Tracer // nil when tracing is off
	// pollOnce starts the poller of idle connections at the first
	// connection; poll is nil if it could not start (then each connection
	// is read by a goroutine).
	pollOnce sync.Once
	poll     *poller
	// acceptor accepts the messages sent over the connections, sendLimit
	// is the per-user rate limit of sends (nil: none); see AcceptSends.
	acceptor  Accepter
	sendLimit *web.Limiter
	// sendGate orders the start of a send (sends.Add) against Shutdown:
	// once sendsClosed is set, no send starts.
	sendGate    sync.RWMutex
	sendsClosed bool
	sends       sync.WaitGroup
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
	if o.MaxSendsInFlight <= 0 {
		o.MaxSendsInFlight = DefaultMaxSendsInFlight
	}
	return &Server{o: o, store: st, presence: pr, auth: authenticate, hub: newHub(o.MaxConnsPerUser), log: o.Logger, m: o.Metrics,
		ipRate:   web.NewLimiter(o.ConnectRatePerIP, o.ConnectBurstPerIP),
		userRate: web.NewLimiter(o.ConnectRatePerUser, o.ConnectBurstPerUser),
		perIP:    map[string]int{},
		tracer:   telemetry.Tracer(o.TracerProvider, "realtime"),
		proxies:  web.Proxies{Trusted: o.trustedPrefixes(), Hops: o.TrustedProxyHops},
		refusals: newRefusedCounter(o.Metrics),
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
	s.DeliverEncoded(ctx, env, nil)
}

// DeliverEncoded is Deliver of an envelope already encoded: wire is env's
// wire form (envelope.Marshal's JSON, as the routing core makes it once
// at accept), which the frames carry as it is; env's payload is not read
// (nil wire: env is encoded).
func (s *Server) DeliverEncoded(ctx context.Context, env *envelope.Envelope, wire []byte) {
	var sc trace.SpanContext
	if s.tracer != nil {
		sc = trace.SpanContextFromContext(ctx)
	}
	if err := s.hub.deliver(env, wire, sc); err != nil {
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
		if err := envelope.DecodeHeader(m.Data, &env); err != nil {
			return fmt.Errorf("%w: %v", bus.ErrPermanent, err)
		}
		s.DeliverEncoded(ctx, &env, m.Data)
		return nil
	})
	<-hbDone
	return err
}

// Shutdown closes every connection (going away) and waits for their
// sessions to end and the sends they started to be accepted or refused,
// or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	for _, ss := range s.hub.all() {
		ss.stop(ws.StatusGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		s.sendGate.Lock()
		s.sendsClosed = true
		s.sendGate.Unlock()
		s.sends.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.pollOnce.Do(func() {}) // no poller from now on
		if s.poll != nil {
			s.poll.close()
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// poller returns the poller of idle connections, nil if there is none.
func (s *Server) poller() *poller {
	s.pollOnce.Do(func() {
		p, err := newPoller()
		if err != nil {
			s.log.Warn("no poller for idle connections; each is read by a goroutine", "err", err)
			return
		}
		s.poll = p
	})
	return s.poll
}

// upgrader answers the WebSocket handshake.
var upgrader = ws.HTTPUpgrader{}

// checkHandshake checks what makes r a WebSocket handshake (RFC 6455
// 4.2.1) and returns the status and plain-text message of its refusal (0
// when it is one): 426 without the upgrade headers, 400 with an
// unsupported version or a malformed key. It sets the headers the
// refusal must carry.
func checkHandshake(w http.ResponseWriter, r *http.Request) (int, string) {
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return http.StatusUpgradeRequired, "WebSocket protocol violation: Connection: Upgrade and Upgrade: websocket headers required"
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		return http.StatusBadRequest, "unsupported WebSocket protocol version (only 13 is supported)"
	}
	if key, err := base64.StdEncoding.DecodeString(r.Header.Get("Sec-WebSocket-Key")); err != nil || len(key) != 16 {
		return http.StatusBadRequest, "invalid Sec-WebSocket-Key"
	}
	return 0, ""
}

// headerHasToken reports whether header name of h lists token (ignoring
// case).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
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
	ip := s.proxies.LimitKey(r)
	if !s.hostAllowed(r) {
		s.refused(refusedHost)
		web.WriteError(w, web.Errorf(http.StatusForbidden, web.CodeOriginNotAllowed, "host not allowed"))
		return
	}
	if err := s.originAllowed(r); err != nil {
		s.log.Debug("websocket origin refused", "err", err)
		s.refused(refusedOrigin)
		web.WriteError(w, web.Errorf(http.StatusForbidden, web.CodeOriginNotAllowed, "origin not allowed"))
		return
	}
	// The address's budget is spent only by attempts without a valid
	// token, so a flood of them from one address (or from many people
	// behind one NAT) never refuses a client whose token is good.
	tok := web.BearerToken(r, true)
	if tok == "" {
		if !s.allow(w, s.ipRate, ip, "too many connection attempts without a valid token from this address") {
			s.refused(refusedRateIP)
			return
		}
		s.refused(refusedUnauthenticated)
		web.WriteError(w, web.Errorf(http.StatusUnauthorized, web.CodeUnauthorized, "missing bearer token"))
		return
	}
	// A token is always verified: a good one cannot be told from a forged
	// one before, and a good one must connect whatever its address has
	// spent. The verifier remembers tokens it verified, so a client's
	// reconnects cost a lookup; a forged token costs one verification,
	// as on every /v1/ endpoint.
	user, exp, err := s.auth(tok)
	if err != nil {
		s.log.Debug("websocket token refused", "err", err)
		// Charged to the address; the answer stays 401 over its budget,
		// so that a client whose token expired renews it instead of
		// waiting for a flood behind its address to end.
		if s.ipRate != nil {
			s.ipRate.Allow(ip, time.Now())
		}
		s.refused(refusedUnauthenticated)
		web.WriteError(w, web.Errorf(http.StatusUnauthorized, web.CodeUnauthorized, "invalid token"))
		return
	}
	if !s.allow(w, s.userRate, user, "too many connection attempts for this user") {
		s.refused(refusedRateUser)
		return
	}
	// Frames delivered before the connection is open are queued: start
	// writes them after the backlog.
	ss := s.newSession(r.Context(), user, ip, exp)
	if status, msg := checkHandshake(w, r); status != 0 {
		ss.cancel()
		s.refused(refusedHandshake)
		http.Error(w, msg, status)
		return
	}
	if !s.admit(w, ss, ip) {
		ss.cancel()
		return
	}
	conn, rw, _, err := upgrader.Upgrade(r, w)
	if err != nil {
		// The upgrader answered the bad handshake.
		ss.cancel()
		s.refused(refusedHandshake)
		s.hub.remove(ss)
		if conn != nil {
			_ = conn.Close()
		}
		s.release(ip)
		s.sessions.Done()
		return
	}
	if upgrade != nil {
		endUpgrade(upgrade, http.StatusSwitchingProtocols)
		upgrade = nil
	}
	if rw != nil && rw.Reader.Buffered() > 0 {
		ss.pending = rw.Reader
	}
	ss.opened(conn)
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
// returns false. After true the session's end calls s.sessions.Done and
// s.release(ip).
func (s *Server) admit(w http.ResponseWriter, ss *session, ip string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var refusal *web.Error
	var reason string
	switch {
	case s.closing:
		reason = refusedShuttingDown
		refusal = &web.Error{Status: http.StatusServiceUnavailable, Code: web.CodeBackendUnavailable,
			Message: "server shutting down", RetryAfter: 1}
	case s.o.MaxConns > 0 && s.open >= s.o.MaxConns:
		reason = refusedMaxConns
		refusal = &web.Error{Status: http.StatusServiceUnavailable, Code: web.CodeBackendUnavailable,
			Message: "this instance is at its connection limit", RetryAfter: 5}
	case s.o.MaxConnsPerIP > 0 && s.perIP[ip] >= s.o.MaxConnsPerIP:
		reason = refusedConnsPerIP
		refusal = &web.Error{Status: http.StatusTooManyRequests, Code: web.CodeRateLimited,
			Message: "too many connections from this address", RetryAfter: 5}
	case !s.hub.add(ss):
		reason = refusedConnsPerUser
		refusal = &web.Error{Status: http.StatusTooManyRequests, Code: web.CodeRateLimited,
			Message: "too many connections for this user", RetryAfter: 5}
	}
	if refusal != nil {
		s.refused(reason)
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
