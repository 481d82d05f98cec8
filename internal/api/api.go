// Package api serves the HTTP API of the client contract: sending
// (decoded here, accepted by the routing core), fetching and
// acknowledging messages, and registering push targets. Every error is
// the contract's JSON shape, with the status and code docs/API.md names.
package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// Store is what the API needs of the store: pages of pending messages,
// acknowledgements and push targets.
type Store interface {
	PendingWithin(ctx context.Context, recipient, cursor string, limit, maxBytes int) (store.Page, error)
	Ack(ctx context.Context, recipient string, ids []string) (int, error)
	store.Targets
}

// Accepter accepts the messages senders send (route.Core): one at a time,
// or a batch in one commit.
type Accepter interface {
	Accept(ctx context.Context, msg route.Message) (route.Accepted, error)
	AcceptBatch(ctx context.Context, msgs []route.Message) ([]route.Accepted, error)
}

// Options configures the API.
type Options struct {
	// Config holds the API's own keys. Of them the server uses the body,
	// batch and page bounds, the fetches per user and the rate limit;
	// the listener's (Listen, ReadTimeout, WriteTimeout) and CORS are the
	// caller's, and what a message may be (MaxPayloadBytes,
	// PublishTimeout, IdempotencyWindow, MaxIngressBacklog) the routing
	// core's and the store's.
	//
	// MaxBodyBytes bounds the body of every request but a batch's;
	// MaxBatch bounds the messages of one POST /v1/messages/batch, and
	// MaxBatchBodyBytes its body (over either: 413; zero:
	// DefaultMaxBatch and DefaultMaxBatchBodyBytes). MaxPageBytes bounds
	// the payload bytes of a page of GET /v1/messages: the page ends
	// early, with a cursor, before the message that would pass it; a page
	// holds at least one message (<= 0: no bound). MaxFetchesPerUser
	// bounds the GET /v1/messages requests one user has in progress on
	// this instance at once; more answer 429 rate_limited (<= 0: no
	// bound). RateLimit is each user's average requests per second over
	// the /v1 endpoints (<= 0: none), with bursts of RateBurst.
	Config

	MaxTargetsPerUser int
	// ValidateTarget checks a push target's form; nil accepts any non-empty target.
	ValidateTarget func(store.Target) error
	// VAPIDPublicKey is served at /v1/push/vapid-public-key ("" answers 404).
	VAPIDPublicKey string
	// Limiter, when set, is the per-user rate limit, shared with another
	// server (the WebSocket sends of the same instance); RateLimit and
	// RateBurst are then not read.
	Limiter *Limiter
	Logger  *slog.Logger
	Metrics *telemetry.Metrics
}

// Server is the HTTP API.
type Server struct {
	o      Options
	store  Store
	accept Accepter
	auth   web.Authenticate
	log    *slog.Logger
	m      *telemetry.Metrics
	// limiter is nil without a rate limit.
	limiter *Limiter
	fetches userSlots
}

// New returns the API server: messages sent go to acc, the rest is
// answered from st.
func New(o Options, st Store, acc Accepter, authenticate web.Authenticate) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.MaxBatchBodyBytes <= 0 {
		o.MaxBatchBodyBytes = DefaultMaxBatchBodyBytes
	}
	limiter := o.Limiter
	if limiter == nil {
		limiter = NewLimiter(o.RateLimit, o.RateBurst)
	}
	return &Server{o: o, store: st, accept: acc, auth: authenticate, log: o.Logger, m: o.Metrics,
		limiter: limiter, fetches: userSlots{max: o.MaxFetchesPerUser}}
}

// Mount adds the /v1 routes to rt.
func (s *Server) Mount(rt *Router) {
	rt.HandleFunc(http.MethodPost, "/v1/messages", web.RequireAuth(s.auth, s.limit(s.send)))
	rt.HandleFunc(http.MethodPost, "/v1/messages/batch", web.RequireAuth(s.auth, s.limit(s.sendBatch)))
	rt.HandleFunc(http.MethodGet, "/v1/messages", web.RequireAuth(s.auth, s.limit(s.fetch)))
	rt.HandleFunc(http.MethodPost, "/v1/messages/ack", web.RequireAuth(s.auth, s.limit(s.ack)))
	rt.HandleFunc(http.MethodPut, "/v1/devices", web.RequireAuth(s.auth, s.limit(s.putDevice)))
	rt.HandleFunc(http.MethodDelete, "/v1/devices", web.RequireAuth(s.auth, s.limit(s.deleteDevice)))
	rt.HandleFunc(http.MethodGet, "/v1/push/vapid-public-key", web.RequireAuth(s.auth, s.limit(s.vapidKey)))
}

type sendRequest struct {
	Recipient      string `json:"recipient"`
	Payload        string `json:"payload"`
	Type           string `json:"type"`
	Ephemeral      bool   `json:"ephemeral"`
	IdempotencyKey string `json:"idempotency_key"`
}

type sendResponse struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
}

// send is POST /v1/messages: the body is the message, which the
// Accepter accepts or refuses.
func (s *Server) send(w http.ResponseWriter, r *http.Request) {
	var req sendRequest
	if e := s.decode(w, r, &req); e != nil {
		web.WriteError(w, e)
		return
	}
	acc, err := s.accept.Accept(r.Context(), route.Message{Sender: web.Subject(r.Context()), Recipient: req.Recipient,
		Payload: req.Payload, Type: req.Type, Ephemeral: req.Ephemeral, IdempotencyKey: req.IdempotencyKey})
	if err != nil {
		web.WriteError(w, route.Answer(err))
		return
	}
	writeAccepted(w, acc.ID, acc.CreatedAt)
}

// writeAccepted writes a send's 202 answer, {"id","created_at"}, as
// web.WriteJSON would write a sendResponse, without the reflection: it
// is every accepted message's answer.
func writeAccepted(w http.ResponseWriter, id string, createdAt time.Time) {
	if !plainID(id) || createdAt.Year() < 0 || createdAt.Year() > 9999 {
		web.WriteJSON(w, http.StatusAccepted, sendResponse{ID: id, CreatedAt: createdAt})
		return
	}
	b := make([]byte, 0, 80)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","created_at":"`...)
	b = createdAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, "\"}\n"...)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = noSniff
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(b)
}

// The header values of every 202, shared (net/http only reads them).
var (
	jsonContentType = []string{"application/json"}
	noSniff         = []string{"nosniff"}
)

// plainID reports whether id needs no escaping in JSON: letters and
// digits only, as the ids the service makes (ULIDs) are.
func plainID(id string) bool {
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return id != ""
}

func unavailable(backend string) *web.Error {
	e := web.Errorf(http.StatusServiceUnavailable, web.CodeBackendUnavailable, "the "+backend+" is unavailable; nothing was accepted, retry later")
	e.RetryAfter = 1
	return e
}

func (s *Server) fetch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, "limit must be an integer from 1 to 500"))
			return
		}
		limit = n
	}
	after := q.Get("after")
	if len(after) > 128 {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, "after is not a cursor this server made"))
		return
	}
	user := web.Subject(r.Context())
	if !s.fetches.acquire(user) {
		e := web.Errorf(http.StatusTooManyRequests, web.CodeRateLimited,
			"at most "+strconv.Itoa(s.o.MaxFetchesPerUser)+" fetches of one user at once; retry after the Retry-After delay")
		e.RetryAfter = 1
		web.WriteError(w, e)
		return
	}
	defer s.fetches.release(user)
	page, err := s.store.PendingWithin(r.Context(), user, after, limit, s.o.MaxPageBytes)
	if errors.Is(err, store.ErrBadCursor) {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, "after is not a cursor this server made"))
		return
	}
	if err != nil {
		s.log.Warn("fetch pending failed", "err", err)
		web.WriteError(w, unavailable("store"))
		return
	}
	if err := writePage(w, page); err != nil {
		s.log.Debug("fetch answer not written", "err", err)
	}
}

// pageBufferBytes is the buffer a page is encoded into on its way to the
// connection.
const pageBufferBytes = 32 << 10

var pageWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, pageBufferBytes) }}

// writePage answers 200 with page as {"messages": [...], "next_cursor":
// "..."}, encoding one envelope at a time into a bounded buffer that
// flushes to the connection, and dropping each envelope once it is
// encoded: a client that reads slowly, or not at all, holds the page (at
// most the store's byte bound) and one buffer, never a second encoded
// copy of it. An error is the connection's: the status is sent already.
func writePage(w http.ResponseWriter, page store.Page) error {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	bw := pageWriters.Get().(*bufio.Writer)
	bw.Reset(w)
	defer func() {
		bw.Reset(nil)
		pageWriters.Put(bw)
	}()
	enc := json.NewEncoder(bw)
	bw.WriteString(`{"messages":[`)
	for i, e := range page.Envelopes {
		if i > 0 {
			bw.WriteByte(',')
		}
		if err := enc.Encode(e); err != nil {
			return err
		}
		page.Envelopes[i] = nil // written: its payload may go
	}
	bw.WriteString(`],"next_cursor":`)
	if err := enc.Encode(page.Next); err != nil {
		return err
	}
	bw.WriteString("}\n")
	return bw.Flush()
}

// userSlots bounds the requests of one user in progress at once (max <= 0:
// no bound). A user's entry exists while it has one in progress.
type userSlots struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

// acquire takes a slot of user's, reporting false when all max are taken.
func (u *userSlots) acquire(user string) bool {
	if u.max <= 0 {
		return true
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[user] >= u.max {
		return false
	}
	if u.n == nil {
		u.n = make(map[string]int)
	}
	u.n[user]++
	return true
}

// release gives back a slot that acquire took.
func (u *userSlots) release(user string) {
	if u.max <= 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[user] <= 1 {
		delete(u.n, user)
		return
	}
	u.n[user]--
}

type ackRequest struct {
	IDs []string `json:"ids"`
}

func (s *Server) ack(w http.ResponseWriter, r *http.Request) {
	var req ackRequest
	if e := s.decode(w, r, &req); e != nil {
		web.WriteError(w, e)
		return
	}
	if err := envelope.ValidateAckIDs(req.IDs); err != nil {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, err.Error()))
		return
	}
	n, err := s.store.Ack(r.Context(), web.Subject(r.Context()), req.IDs)
	if err != nil {
		s.log.Warn("ack failed", "err", err)
		web.WriteError(w, unavailable("store"))
		return
	}
	if s.m != nil {
		s.m.MessagesAcked.Add(float64(n))
	}
	w.WriteHeader(http.StatusNoContent)
}

type deviceRequest struct {
	Platform     string `json:"platform"`
	Token        string `json:"token"`
	Subscription *struct {
		Endpoint string `json:"endpoint"`
		Keys     struct {
			P256DH string `json:"p256dh"`
			Auth   string `json:"auth"`
		} `json:"keys"`
	} `json:"subscription"`
}

func (s *Server) deviceTarget(w http.ResponseWriter, r *http.Request) (store.Target, bool) {
	var req deviceRequest
	if e := s.decode(w, r, &req); e != nil {
		web.WriteError(w, e)
		return store.Target{}, false
	}
	t := store.Target{Platform: req.Platform, Token: req.Token}
	switch req.Platform {
	case "android", "ios", "apns":
		if req.Subscription != nil {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidDevice, "subscription is only for platform webpush"))
			return t, false
		}
	case "webpush":
		if req.Subscription == nil || req.Token != "" {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidDevice, "webpush needs subscription {endpoint, keys {p256dh, auth}} and no token"))
			return t, false
		}
		t.Token = req.Subscription.Endpoint
		t.P256DH = req.Subscription.Keys.P256DH
		t.Auth = req.Subscription.Keys.Auth
	default:
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidDevice, "platform must be android, ios, apns or webpush"))
		return t, false
	}
	if t.Token == "" {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidDevice, "token is required"))
		return t, false
	}
	if s.o.ValidateTarget != nil {
		if err := s.o.ValidateTarget(t); err != nil {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidDevice, err.Error()))
			return t, false
		}
	}
	return t, true
}

func (s *Server) putDevice(w http.ResponseWriter, r *http.Request) {
	t, ok := s.deviceTarget(w, r)
	if !ok {
		return
	}
	err := s.store.PutTarget(r.Context(), web.Subject(r.Context()), t, s.o.MaxTargetsPerUser)
	if errors.Is(err, store.ErrTooManyTargets) {
		web.WriteError(w, web.Errorf(http.StatusConflict, web.CodeTooManyDevices,
			"at most "+strconv.Itoa(s.o.MaxTargetsPerUser)+" push targets per user; delete one first"))
		return
	}
	if err != nil {
		s.log.Warn("put device failed", "err", err)
		web.WriteError(w, unavailable("store"))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	t, ok := s.deviceTarget(w, r)
	if !ok {
		return
	}
	if err := s.store.DeleteTarget(r.Context(), web.Subject(r.Context()), t); err != nil {
		s.log.Warn("delete device failed", "err", err)
		web.WriteError(w, unavailable("store"))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) vapidKey(w http.ResponseWriter, r *http.Request) {
	if s.o.VAPIDPublicKey == "" {
		web.WriteError(w, web.Errorf(http.StatusNotFound, web.CodeNotFound, "web push is not configured"))
		return
	}
	web.WriteJSON(w, http.StatusOK, map[string]string{"public_key": s.o.VAPIDPublicKey})
}

// decode reads a JSON body of at most MaxBodyBytes into v.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) *web.Error {
	if e := CheckJSONContentType(r); e != nil {
		return e
	}
	// The body is read whole into a pooled buffer (at most the limit)
	// and decoded from there: no decoder and no buffer of its own per
	// request.
	buf := bodyBufs.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledBody {
			buf.Reset()
			bodyBufs.Put(buf)
		}
	}()
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return bodyTooLarge(s.o.MaxBodyBytes, "api.max_body_bytes")
		}
		return web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body could not be read")
	}
	body := buf.Bytes()
	if len(bytes.TrimSpace(body)) == 0 {
		return web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body is empty")
	}
	if err := json.Unmarshal(body, v); err != nil {
		// Unmarshal checks the whole body first: a complete value
		// followed by more is a syntax error "after top-level value".
		var se *json.SyntaxError
		if errors.As(err, &se) && strings.Contains(se.Error(), "after top-level value") {
			return web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body has data after the JSON value")
		}
		return web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body is not valid JSON of the expected shape: "+err.Error())
	}
	return nil
}

// maxPooledBody is the largest request body buffer kept for reuse.
const maxPooledBody = 64 << 10

var bodyBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// bodyTooLarge is the 413 of a body over max bytes, the value of key.
func bodyTooLarge(max int64, key string) *web.Error {
	return web.Errorf(http.StatusRequestEntityTooLarge, web.CodeBodyTooLarge, "request body is over "+strconv.FormatInt(max, 10)+" bytes ("+key+")")
}

// CheckJSONContentType answers 415 unless the request's body is application/json.
func CheckJSONContentType(r *http.Request) *web.Error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return web.Errorf(http.StatusUnsupportedMediaType, web.CodeUnsupportedMedia, "Content-Type must be application/json")
	}
	return nil
}
