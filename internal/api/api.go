// Package api serves the HTTP API of the client contract: sending,
// fetching and acknowledging messages, and registering push targets.
package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// Store is what the API needs of the store.
type Store interface {
	store.Messages
	store.PendingCounts
	store.Idempotencies
	store.Targets
}

// Publisher publishes accepted envelopes to the ingress topic.
type Publisher interface {
	PublishIngress(ctx context.Context, m *bus.Message) error
}

// LocalRouter is this instance's own pipeline: it takes the routing event
// of a stored message in process, or reports false when it cannot.
type LocalRouter interface {
	Offer(m *bus.Message, env *envelope.Envelope) bool
}

// Options configures the API.
type Options struct {
	MaxBodyBytes      int64
	MaxPayloadBytes   int
	PublishTimeout    time.Duration
	MaxTargetsPerUser int
	// MaxPendingPerRecipient refuses stored sends to a recipient with that
	// many pending messages (<= 0: no cap).
	MaxPendingPerRecipient int
	// MaxPendingPerSender and MaxPendingBytesPerSender refuse stored sends
	// of a sender with that many messages pending, or whose pending
	// payload bytes this send would take past the bound, whoever the
	// recipients are (<= 0: no cap).
	MaxPendingPerSender      int
	MaxPendingBytesPerSender int64
	// MaxPageBytes bounds the payload bytes of a page of GET /v1/messages:
	// the page ends early, with a cursor, before the message that would
	// pass it; a page holds at least one message (<= 0: no bound).
	MaxPageBytes int
	// MaxFetchesPerUser bounds the GET /v1/messages requests one user has
	// in progress on this instance at once; more answer 429 rate_limited
	// (<= 0: no bound).
	MaxFetchesPerUser int
	// ValidateTarget checks a push target's form; nil accepts any non-empty target.
	ValidateTarget func(store.Target) error
	// VAPIDPublicKey is served at /v1/push/vapid-public-key ("" answers 404).
	VAPIDPublicKey string
	// Backpressure, when set, refuses sends while the ingress backlog is
	// over its limit.
	Backpressure *Backpressure
	// Local, when set, routes the stored messages this API accepts in
	// process; the ingress topic carries those it does not take.
	Local LocalRouter
	// RateLimit is each user's average requests per second over the /v1
	// endpoints (<= 0: none), with bursts of RateBurst.
	RateLimit float64
	RateBurst int
	Logger    *slog.Logger
	Metrics   *telemetry.Metrics
	// TracerProvider, when set, traces each send: its acceptance
	// (validation, idempotency), the store write and the ingress publish.
	TracerProvider trace.TracerProvider
}

// Server is the HTTP API.
type Server struct {
	o     Options
	store Store
	bus   Publisher
	auth  web.Authenticate
	ids   *envelope.IDs
	log   *slog.Logger
	m     *telemetry.Metrics
	// limiter is nil without a rate limit.
	limiter *Limiter
	tracer  trace.Tracer // nil when tracing is off
	// counts and senders remember pending counts read from the store, of
	// recipients and of senders.
	counts  queueCounts
	senders queueCounts
	fetches userSlots
}

// New returns the API server.
func New(o Options, st Store, pub Publisher, authenticate web.Authenticate) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Server{o: o, store: st, bus: pub, auth: authenticate, ids: envelope.NewIDs(), log: o.Logger, m: o.Metrics,
		limiter: NewLimiter(o.RateLimit, o.RateBurst), tracer: telemetry.Tracer(o.TracerProvider, "api"),
		fetches: userSlots{max: o.MaxFetchesPerUser}}
}

// Mount adds the /v1 routes to rt.
func (s *Server) Mount(rt *Router) {
	rt.HandleFunc(http.MethodPost, "/v1/messages", web.RequireAuth(s.auth, s.limit(s.send)))
	rt.HandleFunc(http.MethodGet, "/v1/messages", web.RequireAuth(s.auth, s.limit(s.fetch)))
	rt.HandleFunc(http.MethodPost, "/v1/messages/ack", web.RequireAuth(s.auth, s.limit(s.ack)))
	rt.HandleFunc(http.MethodPut, "/v1/devices", web.RequireAuth(s.auth, s.limit(s.putDevice)))
	rt.HandleFunc(http.MethodDelete, "/v1/devices", web.RequireAuth(s.auth, s.limit(s.deleteDevice)))
	rt.HandleFunc(http.MethodGet, "/v1/push/vapid-public-key", web.RequireAuth(s.auth, s.limit(s.vapidKey)))
}

type sendRequest struct {
	Recipient      string  `json:"recipient"`
	Payload        *string `json:"payload"`
	Type           string  `json:"type"`
	Ephemeral      bool    `json:"ephemeral"`
	IdempotencyKey string  `json:"idempotency_key"`
}

type sendResponse struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
}

func (s *Server) send(w http.ResponseWriter, r *http.Request) {
	if s.tracer != nil {
		ctx, span := s.tracer.Start(r.Context(), "accept")
		defer span.End()
		r = r.WithContext(ctx)
	}
	if s.o.Backpressure.Overloaded() {
		e := web.Errorf(http.StatusServiceUnavailable, web.CodeBackendUnavailable, "the routing pipeline is behind; nothing was accepted, retry later")
		e.RetryAfter = 1
		if s.m != nil {
			s.m.SendsRefused.WithLabelValues("backlog").Inc()
		}
		web.WriteError(w, e)
		return
	}
	var req sendRequest
	if e := s.decode(w, r, &req); e != nil {
		web.WriteError(w, e)
		return
	}
	if err := envelope.ValidateURN(req.Recipient); err != nil {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidRecipient, "recipient: "+err.Error()))
		return
	}
	if req.Payload == nil || *req.Payload == "" {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidPayload, "payload is required (standard base64)"))
		return
	}
	if base64.StdEncoding.DecodedLen(len(*req.Payload)) > s.o.MaxPayloadBytes+2 {
		web.WriteError(w, web.Errorf(http.StatusRequestEntityTooLarge, web.CodePayloadTooLarge,
			"payload is over "+strconv.Itoa(s.o.MaxPayloadBytes)+" bytes"))
		return
	}
	payload, err := base64.StdEncoding.DecodeString(*req.Payload)
	if err != nil {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidPayload, "payload is not standard base64"))
		return
	}
	if len(payload) > s.o.MaxPayloadBytes {
		web.WriteError(w, web.Errorf(http.StatusRequestEntityTooLarge, web.CodePayloadTooLarge,
			"payload is over "+strconv.Itoa(s.o.MaxPayloadBytes)+" bytes"))
		return
	}
	if err := envelope.ValidateType(req.Type); err != nil {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, "type: "+err.Error()))
		return
	}
	if req.IdempotencyKey != "" && !validKey(req.IdempotencyKey) {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, "idempotency_key must be 1-64 characters of [A-Za-z0-9_-]"))
		return
	}
	now := envelope.Now()
	env := &envelope.Envelope{
		ID:        s.ids.New(now),
		Sender:    web.Subject(r.Context()),
		Recipient: req.Recipient,
		Type:      req.Type,
		Payload:   payload,
		Ephemeral: req.Ephemeral,
		CreatedAt: now,
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.PublishTimeout)
	defer cancel()
	if s.tracer != nil {
		trace.SpanFromContext(ctx).SetAttributes(telemetry.AttrMessageID.String(env.ID),
			attribute.Bool("routing.ephemeral", env.Ephemeral), attribute.Bool("routing.idempotency_key", req.IdempotencyKey != ""))
	}
	if req.IdempotencyKey != "" {
		ictx, span := telemetry.Start(ctx, s.tracer, "idempotency reserve", trace.SpanKindInternal)
		hash := store.EnvelopeHash(env)
		rec, fresh, err := s.store.ReserveIdempotency(ictx, store.Idempotency{Sender: env.Sender, Key: req.IdempotencyKey,
			ID: env.ID, CreatedAt: env.CreatedAt, RequestHash: hash})
		if span != nil {
			span.SetAttributes(attribute.Bool("routing.idempotency.fresh", fresh))
			telemetry.End(span, err)
		}
		if err != nil {
			s.log.WarnContext(ctx, "idempotency reserve failed", "err", err)
			web.WriteError(w, unavailable("store"))
			return
		}
		if !fresh {
			if s.m != nil {
				s.m.IdempotentHits.Inc()
			}
			if !rec.Published {
				if e := s.acceptAgain(ctx, rec, env, hash); e != nil {
					web.WriteError(w, e)
					return
				}
			}
			// The key's answer, whatever this request's body: a client may
			// encrypt a message again before it retries.
			web.WriteJSON(w, http.StatusAccepted, sendResponse{ID: rec.ID, CreatedAt: rec.CreatedAt})
			return
		}
		if e := s.acceptNew(ctx, env, req.IdempotencyKey); e != nil {
			// A stored message's record is published by the commit that
			// stores it: releasing deletes only a record whose message is
			// not stored (and a put still in flight then stores nothing).
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(r.Context()), time.Second)
			if err := s.store.ReleaseIdempotency(rctx, env.Sender, req.IdempotencyKey); err != nil {
				// The key stays reserved for an envelope never accepted: a
				// retry with it accepts that envelope, with its id.
				s.log.Warn("idempotency release failed", "id", env.ID, "err", err)
			}
			rcancel()
			web.WriteError(w, e)
			return
		}
		if env.Ephemeral {
			s.markPublished(ctx, env.Sender, req.IdempotencyKey, env.ID)
		}
	} else if e := s.acceptNew(ctx, env, ""); e != nil {
		web.WriteError(w, e)
		return
	}
	if s.m != nil {
		s.m.MessagesAccepted.WithLabelValues(strconv.FormatBool(env.Ephemeral)).Inc()
	}
	web.WriteJSON(w, http.StatusAccepted, sendResponse{ID: env.ID, CreatedAt: env.CreatedAt})
}

// acceptAgain finishes what an earlier send with the same idempotency key
// started: its record is reserved but the message not known accepted (the
// earlier attempt failed, or is still running). The record holds no
// payload: when this request is the same message (same request hash), it
// accepts it again under the record's id and time. A stored message is
// put under the claim of the record (store.NewMessage.Key): if an earlier
// attempt stored it, that attempt took the claim in the same commit, and
// this one stores and routes nothing (even when the recipient has
// acknowledged the message since); the answer is the key's all the same.
// Another message under the key is accepted only if the first one is
// stored already (then the key's answer stands); otherwise it answers 409
// idempotency_key_reused, since what the key was reserved for cannot be
// known.
func (s *Server) acceptAgain(ctx context.Context, rec store.Idempotency, env *envelope.Envelope, hash []byte) *web.Error {
	if bytes.Equal(rec.RequestHash, hash) {
		env.ID, env.CreatedAt = rec.ID, rec.CreatedAt
		// CheckTombstone: a release before claims may have reserved the
		// record and stored the message without claiming it (then failed
		// before marking the record published), and its recipient may
		// have acknowledged it since. Retries are few: the lookup costs
		// little.
		if e := s.accept(ctx, store.NewMessage{Envelope: env, Key: rec.Key, CheckTombstone: true}); e != nil {
			return e
		}
		if !env.Ephemeral {
			return nil // the put claimed the record, or another attempt did
		}
	} else {
		stored, err := s.store.Stored(ctx, []string{rec.ID})
		if err != nil {
			s.log.WarnContext(ctx, "idempotency stored check failed", "id", rec.ID, "err", err)
			return unavailable("store")
		}
		if len(stored) == 0 {
			e := web.Errorf(http.StatusConflict, web.CodeIdempotencyKeyReused,
				"idempotency_key is held by another message whose sending has not finished; nothing was accepted: send the same message again with this key, or use a new key")
			e.RetryAfter = 1
			return e
		}
	}
	s.markPublished(ctx, rec.Sender, rec.Key, rec.ID)
	return nil
}

// markPublished marks the record of (sender, key) published once its
// message is accepted without a put that claims it: an ephemeral message
// once published, or a stored one whose put did not claim the record (a
// release before claims stored it). A failure is logged: the message is
// accepted, and a retry with the key accepts it again (publishes an
// ephemeral one again; stores nothing twice).
func (s *Server) markPublished(ctx context.Context, sender, key, id string) {
	if err := s.store.MarkPublished(ctx, sender, key); err != nil {
		s.log.Warn("idempotency mark published failed", "id", id, "err", err)
	}
}

// acceptNew accepts a message not accepted before (a retry with an
// idempotency key goes to accept directly: its message may be stored
// already): a stored one only while its recipient's queue has room and
// its sender is within its quota. A stored one is put under the claim of
// its idempotency record when key is not "" (the record reserved for it
// by this request), which the commit that stores it marks published.
func (s *Server) acceptNew(ctx context.Context, env *envelope.Envelope, key string) *web.Error {
	if !env.Ephemeral {
		if s.o.MaxPendingPerRecipient > 0 {
			if e := s.checkQueue(ctx, env.Recipient); e != nil {
				return e
			}
		}
		if s.o.MaxPendingPerSender > 0 || s.o.MaxPendingBytesPerSender > 0 {
			if e := s.checkSender(ctx, env.Sender, len(env.Payload)); e != nil {
				return e
			}
		}
	}
	return s.accept(ctx, store.NewMessage{Envelope: env, Key: key})
}

// checkQueue refuses a send to a recipient whose pending messages reached
// the cap. It reads the store's maintained count (one row), unless a
// count read less than a second ago shows the queue far below the cap
// (queueCounts). Sends racing
// each other may pass the cap by as many as run at once; it bounds what
// one recipient's queue can hold, it is not an exact count.
func (s *Server) checkQueue(ctx context.Context, recipient string) *web.Error {
	now := time.Now()
	if s.counts.roomFor(recipient, s.o.MaxPendingPerRecipient, 0, 0, now) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.PublishTimeout)
	defer cancel()
	n, err := s.store.PendingCount(ctx, recipient)
	if err != nil {
		s.log.Warn("pending count failed", "err", err)
		return unavailable("store")
	}
	if n < s.o.MaxPendingPerRecipient {
		s.counts.read(recipient, n, 0, 0, now)
		return nil
	}
	if s.m != nil {
		s.m.SendsRefused.WithLabelValues("recipient_queue_full").Inc()
	}
	return web.Errorf(http.StatusTooManyRequests, web.CodeRecipientQueueFull,
		"the recipient has "+strconv.Itoa(s.o.MaxPendingPerRecipient)+" pending messages, the most it may have; nothing was accepted")
}

// checkSender refuses a send of size payload bytes from a sender whose
// pending messages reached their cap, or whose pending payload bytes it
// would take past theirs: any well-formed URN is a recipient, so the
// per-recipient cap alone does not bound what one sender can leave in
// the store. Like checkQueue it reads the store's maintained counts (one
// row) unless a count read less than countFresh ago shows the sender far
// below both caps, and concurrent sends may pass the caps by as many as
// run at once. It answers no Retry-After: room comes when recipients
// acknowledge, which no delay predicts.
func (s *Server) checkSender(ctx context.Context, sender string, size int) *web.Error {
	now := time.Now()
	maxN, maxBytes := s.o.MaxPendingPerSender, s.o.MaxPendingBytesPerSender
	if s.senders.roomFor(sender, maxN, maxBytes, int64(size), now) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.PublishTimeout)
	defer cancel()
	c, err := s.store.SenderPending(ctx, sender)
	if err != nil {
		s.log.Warn("sender pending count failed", "err", err)
		return unavailable("store")
	}
	if (maxN <= 0 || c.Messages < maxN) && (maxBytes <= 0 || c.Bytes+int64(size) <= maxBytes) {
		s.senders.read(sender, c.Messages, c.Bytes, int64(size), now)
		return nil
	}
	if s.m != nil {
		s.m.SendsRefused.WithLabelValues("sender_quota_exceeded").Inc()
	}
	var limits []string
	if maxN > 0 {
		limits = append(limits, strconv.Itoa(maxN)+" messages")
	}
	if maxBytes > 0 {
		limits = append(limits, strconv.FormatInt(maxBytes, 10)+" payload bytes")
	}
	return web.Errorf(http.StatusTooManyRequests, web.CodeSenderQuotaExceeded,
		"you have "+strconv.Itoa(c.Messages)+" messages of "+strconv.FormatInt(c.Bytes, 10)+
			" payload bytes waiting for their recipients; a sender may have at most "+strings.Join(limits, " and ")+
			" pending; nothing was accepted; room comes as recipients acknowledge")
}

// storedAttrs mark a routing event whose envelope is in the store already.
// Read only: shared by every publish.
var storedAttrs = map[string]string{bus.AttrStored: "1"}

// accept makes msg's envelope durable and publishes its routing event; an
// error means nothing was accepted. The durable point is the store, where
// the envelope is put as a new message (store.Messages.PutNew, under
// msg's claim if any): concurrent accepts share one commit (and one
// fsync) through the store's group commit, and the answer waits for it. A
// put whose claim another attempt took stores nothing and routes nothing:
// that attempt stored the message. The routing event then goes on the
// ingress queue, or to this instance's own pipeline when it takes it
// (Local); if that publish fails the message is still accepted, and the
// pipeline's sweep of unrouted envelopes routes it. An ephemeral envelope
// is never stored: it is accepted once the bus holds it.
func (s *Server) accept(ctx context.Context, msg store.NewMessage) *web.Error {
	env := msg.Envelope
	data, err := envelope.Marshal(env)
	if err != nil {
		s.log.Error("encode envelope", "id", env.ID, "err", err)
		return web.Errorf(http.StatusInternalServerError, web.CodeInternal, "the message could not be encoded")
	}
	m := &bus.Message{ID: env.ID, Data: data, OrderingKey: env.Recipient}
	if !env.Ephemeral {
		// Wait for the commit's outcome even if the client goes away, so
		// that the answer says what happened.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.o.PublishTimeout)
		cctx, span := telemetry.Start(cctx, s.tracer, "store write", trace.SpanKindInternal)
		stored, err := s.store.PutNew(cctx, []store.NewMessage{msg})
		cancel()
		if span != nil {
			span.SetAttributes(telemetry.AttrMessageID.String(env.ID))
			telemetry.End(span, err)
		}
		if err != nil {
			s.log.WarnContext(ctx, "store accepted message failed", "id", env.ID, "err", err)
			return unavailable("store")
		}
		if len(stored) == 1 && !stored[0] {
			return nil // a retry whose claim an earlier attempt took: stored (and routed) by that one
		}
		m.Attributes = storedAttrs
		if s.o.Local != nil {
			if s.tracer != nil {
				m.Trace = trace.SpanContextFromContext(ctx)
			}
			if s.o.Local.Offer(m, env) {
				return nil
			}
		}
	}
	if err := s.bus.PublishIngress(ctx, m); err != nil {
		if env.Ephemeral {
			s.log.WarnContext(ctx, "publish ingress failed", "id", env.ID, "err", err)
			return unavailable("bus")
		}
		s.log.WarnContext(ctx, "routing event not published; the stored message is routed by the pipeline's sweep", "id", env.ID, "err", err)
		if s.m != nil {
			s.m.RoutingDeferred.Inc()
		}
	}
	return nil
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
	body := http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return web.Errorf(http.StatusRequestEntityTooLarge, web.CodeBodyTooLarge, "request body is over "+strconv.FormatInt(s.o.MaxBodyBytes, 10)+" bytes")
		case errors.Is(err, io.EOF):
			return web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body is empty")
		default:
			return web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body is not valid JSON of the expected shape: "+err.Error())
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return web.Errorf(http.StatusRequestEntityTooLarge, web.CodeBodyTooLarge, "request body is over "+strconv.FormatInt(s.o.MaxBodyBytes, 10)+" bytes")
		}
		return web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body has data after the JSON value")
	}
	return nil
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

func validKey(k string) bool {
	if len(k) < 1 || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
