package route

import (
	"bytes"
	"context"
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Message is a message to accept, as its sender asked (the body of POST
// /v1/messages, or of a WebSocket send frame).
type Message struct {
	// Sender is the caller's URN, from its token, never from a body.
	Sender    string
	Recipient string
	// Payload is the ciphertext in standard base64, as it arrived.
	Payload   string
	Type      string
	Ephemeral bool
	// IdempotencyKey, when not "", makes a retry of the message accepted
	// once (1-64 of [A-Za-z0-9_-], scoped to the sender).
	IdempotencyKey string
}

// Accepted is the answer to an accepted message.
type Accepted struct {
	ID        string
	CreatedAt time.Time
}

// accepting is a message on its way through Accept: its envelope (the
// payload's bytes only where the store or the idempotency hash needs
// them) and its payload's canonical standard base64.
type accepting struct {
	env     *envelope.Envelope
	payload string
}

// Accept accepts msg: once it returns without an error, a stored message
// is committed to the store and will reach its recipient (live, by push
// and fetch), an ephemeral one is on its way to the recipient's live
// connections. With an error (an *Error) nothing was accepted.
//
// A message with an idempotency key that was accepted before answers as
// it did then (same id and time) and is not delivered again.
//
// Accept takes one message; a batch accepted in one store commit is the
// same steps over a slice (the store's PutNew takes many).
func (c *Core) Accept(ctx context.Context, msg Message) (Accepted, error) {
	if c.tracer != nil {
		var span trace.Span
		ctx, span = c.tracer.Start(ctx, "accept")
		defer span.End()
	}
	a, err := c.check(msg)
	if err != nil {
		return Accepted{}, err // bad input is answered as such, overloaded or not
	}
	if c.backlog.overloaded() {
		c.refused("backlog")
		return Accepted{}, errOverloaded
	}
	env := a.env
	callerCtx := ctx
	ctx, cancel := context.WithTimeout(ctx, c.o.AcceptTimeout)
	defer cancel()
	if c.tracer != nil {
		trace.SpanFromContext(ctx).SetAttributes(telemetry.AttrMessageID.String(env.ID),
			attribute.Bool("routing.ephemeral", env.Ephemeral), attribute.Bool("routing.idempotency_key", msg.IdempotencyKey != ""))
	}
	if key := msg.IdempotencyKey; key != "" {
		ictx, span := telemetry.Start(ctx, c.tracer, "idempotency reserve", trace.SpanKindInternal)
		hash := store.EnvelopeHash(env)
		rec, fresh, err := c.store.ReserveIdempotency(ictx, store.Idempotency{Sender: env.Sender, Key: key,
			ID: env.ID, CreatedAt: env.CreatedAt, RequestHash: hash})
		if span != nil {
			span.SetAttributes(attribute.Bool("routing.idempotency.fresh", fresh))
			telemetry.End(span, err)
		}
		if err != nil {
			c.log.WarnContext(ctx, "idempotency reserve failed", "err", err)
			return Accepted{}, unavailable("store")
		}
		if !fresh {
			if c.m != nil {
				c.m.IdempotentHits.Inc()
			}
			if !rec.Published {
				if err := c.acceptAgain(ctx, rec, a, hash); err != nil {
					return Accepted{}, err
				}
			}
			// The key's answer, whatever this message: a client may
			// encrypt a message again before it retries.
			return Accepted{ID: rec.ID, CreatedAt: rec.CreatedAt}, nil
		}
		if err := c.acceptNew(ctx, a, key); err != nil {
			// A stored message's record is published by the commit that
			// stores it: releasing deletes only a record whose message is
			// not stored (and a put still in flight then stores nothing).
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(callerCtx), time.Second)
			if err := c.store.ReleaseIdempotency(rctx, env.Sender, key); err != nil {
				// The key stays reserved for an envelope never accepted: a
				// retry with it accepts that envelope, with its id.
				c.log.Warn("idempotency release failed", "id", env.ID, "err", err)
			}
			rcancel()
			return Accepted{}, err
		}
		if env.Ephemeral {
			c.markPublished(ctx, env.Sender, key, env.ID)
		}
	} else if err := c.acceptNew(ctx, a, ""); err != nil {
		return Accepted{}, err
	}
	if c.m != nil {
		c.m.MessagesAccepted.WithLabelValues(strconv.FormatBool(env.Ephemeral)).Inc()
	}
	return Accepted{ID: env.ID, CreatedAt: env.CreatedAt}, nil
}

// check validates msg against the client contract and makes its
// envelope. The payload is checked without a decode when it is the
// canonical base64 of its bytes (what clients send); it is decoded only
// for the store (a stored message) or the idempotency hash (a keyed one).
func (c *Core) check(msg Message) (accepting, error) {
	if err := envelope.ValidateURN(msg.Recipient); err != nil {
		return accepting{}, invalid(FieldRecipient, "recipient: "+err.Error())
	}
	if msg.Payload == "" {
		return accepting{}, invalid(FieldPayload, "payload is required (standard base64)")
	}
	max := c.o.MaxPayloadBytes
	text := msg.Payload
	var payload []byte
	if n, ok := envelope.CanonicalBase64(text); ok {
		if n > max {
			return accepting{}, tooLarge(max)
		}
	} else {
		// Line breaks, trailing bits or not base64 at all: decoded as
		// StdEncoding decodes, and written again as it writes.
		if base64.StdEncoding.DecodedLen(len(text)) > max+2 {
			return accepting{}, tooLarge(max)
		}
		p, err := base64.StdEncoding.DecodeString(text)
		if err != nil {
			return accepting{}, invalid(FieldPayload, "payload is not standard base64")
		}
		if len(p) > max {
			return accepting{}, tooLarge(max)
		}
		payload, text = p, base64.StdEncoding.EncodeToString(p)
	}
	if err := envelope.ValidateType(msg.Type); err != nil {
		return accepting{}, invalid(FieldType, "type: "+err.Error())
	}
	if msg.IdempotencyKey != "" && !validKey(msg.IdempotencyKey) {
		return accepting{}, invalid(FieldIdempotencyKey, "idempotency_key must be 1-64 characters of [A-Za-z0-9_-]")
	}
	if payload == nil && (!msg.Ephemeral || msg.IdempotencyKey != "") {
		payload, _ = base64.StdEncoding.DecodeString(text) // canonical: it decodes
	}
	now := envelope.Now()
	env := &envelope.Envelope{
		ID:        c.ids.New(now),
		Sender:    msg.Sender,
		Recipient: msg.Recipient,
		Type:      msg.Type,
		Payload:   payload,
		Ephemeral: msg.Ephemeral,
		CreatedAt: now,
	}
	return accepting{env: env, payload: text}, nil
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
// stored already (then the key's answer stands); otherwise it is
// KindKeyReused, since what the key was reserved for cannot be known.
func (c *Core) acceptAgain(ctx context.Context, rec store.Idempotency, a accepting, hash []byte) error {
	if bytes.Equal(rec.RequestHash, hash) {
		a.env.ID, a.env.CreatedAt = rec.ID, rec.CreatedAt
		// CheckTombstone: a release before claims may have reserved the
		// record and stored the message without claiming it (then failed
		// before marking the record published), and its recipient may
		// have acknowledged it since. Retries are few: the lookup costs
		// little.
		if err := c.commit(ctx, a, store.NewMessage{Envelope: a.env, Key: rec.Key, CheckTombstone: true}); err != nil {
			return err
		}
		if !a.env.Ephemeral {
			return nil // the put claimed the record, or another attempt did
		}
	} else {
		stored, err := c.store.Stored(ctx, []string{rec.ID})
		if err != nil {
			c.log.WarnContext(ctx, "idempotency stored check failed", "id", rec.ID, "err", err)
			return unavailable("store")
		}
		if len(stored) == 0 {
			return &Error{Kind: KindKeyReused, Field: FieldIdempotencyKey, RetryAfter: time.Second,
				Message: "idempotency_key is held by another message whose sending has not finished; nothing was accepted: send the same message again with this key, or use a new key"}
		}
	}
	c.markPublished(ctx, rec.Sender, rec.Key, rec.ID)
	return nil
}

// markPublished marks the record of (sender, key) published once its
// message is accepted without a put that claims it: an ephemeral message
// once published, or a stored one whose put did not claim the record (a
// release before claims stored it). A failure is logged: the message is
// accepted, and a retry with the key accepts it again (publishes an
// ephemeral one again; stores nothing twice).
func (c *Core) markPublished(ctx context.Context, sender, key, id string) {
	if err := c.store.MarkPublished(ctx, sender, key); err != nil {
		c.log.Warn("idempotency mark published failed", "id", id, "err", err)
	}
}

// acceptNew accepts a message not accepted before (a retry with an
// idempotency key goes to commit directly: its message may be stored
// already): a stored one only while its recipient's queue has room and
// its sender is within its quota. A stored one is put under the claim of
// its idempotency record when key is not "" (the record reserved for it
// by this request), which the commit that stores it marks published.
func (c *Core) acceptNew(ctx context.Context, a accepting, key string) error {
	env := a.env
	if !env.Ephemeral {
		if c.o.MaxPendingPerRecipient > 0 {
			if err := c.checkQueue(ctx, env.Recipient); err != nil {
				return err
			}
		}
		if c.o.MaxPendingPerSender > 0 || c.o.MaxPendingBytesPerSender > 0 {
			if err := c.checkSender(ctx, env.Sender, len(env.Payload)); err != nil {
				return err
			}
		}
	}
	return c.commit(ctx, a, store.NewMessage{Envelope: env, Key: key})
}

// checkQueue refuses a message to a recipient whose pending messages
// reached the cap. It reads the store's maintained count (one row), unless
// a count read less than countFresh ago shows the queue far below the cap
// (queueCounts). Messages racing each other may pass the cap by as many as
// run at once; it bounds what one recipient's queue can hold, it is not an
// exact count.
func (c *Core) checkQueue(ctx context.Context, recipient string) error {
	now := time.Now()
	if c.counts.roomFor(recipient, c.o.MaxPendingPerRecipient, 0, 0, now) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.AcceptTimeout)
	defer cancel()
	n, err := c.store.PendingCount(ctx, recipient)
	if err != nil {
		c.log.Warn("pending count failed", "err", err)
		return unavailable("store")
	}
	if n < c.o.MaxPendingPerRecipient {
		c.counts.read(recipient, n, 0, 0, now)
		return nil
	}
	c.refused("recipient_queue_full")
	return &Error{Kind: KindQueueFull, Field: FieldRecipient,
		Message: "the recipient has " + strconv.Itoa(c.o.MaxPendingPerRecipient) + " pending messages, the most it may have; nothing was accepted"}
}

// checkSender refuses a message of size payload bytes from a sender whose
// pending messages reached their cap, or whose pending payload bytes it
// would take past theirs: any well-formed URN is a recipient, so the
// per-recipient cap alone does not bound what one sender can leave in the
// store. Like checkQueue it reads the store's maintained counts (one row)
// unless a count read less than countFresh ago shows the sender far below
// both caps, and concurrent messages may pass the caps by as many as run
// at once. Its error has no RetryAfter: room comes when recipients
// acknowledge, which no delay predicts.
func (c *Core) checkSender(ctx context.Context, sender string, size int) error {
	now := time.Now()
	maxN, maxBytes := c.o.MaxPendingPerSender, c.o.MaxPendingBytesPerSender
	if c.senders.roomFor(sender, maxN, maxBytes, int64(size), now) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.AcceptTimeout)
	defer cancel()
	n, err := c.store.SenderPending(ctx, sender)
	if err != nil {
		c.log.Warn("sender pending count failed", "err", err)
		return unavailable("store")
	}
	if (maxN <= 0 || n.Messages < maxN) && (maxBytes <= 0 || n.Bytes+int64(size) <= maxBytes) {
		c.senders.read(sender, n.Messages, n.Bytes, int64(size), now)
		return nil
	}
	c.refused("sender_quota_exceeded")
	var limits []string
	if maxN > 0 {
		limits = append(limits, strconv.Itoa(maxN)+" messages")
	}
	if maxBytes > 0 {
		limits = append(limits, strconv.FormatInt(maxBytes, 10)+" payload bytes")
	}
	return &Error{Kind: KindSenderQuota, Message: "you have " + strconv.Itoa(n.Messages) + " messages of " + strconv.FormatInt(n.Bytes, 10) +
		" payload bytes waiting for their recipients; a sender may have at most " + strings.Join(limits, " and ") +
		" pending; nothing was accepted; room comes as recipients acknowledge"}
}

// refused counts a message refused for reason.
func (c *Core) refused(reason string) {
	if c.m != nil {
		c.m.SendsRefused.WithLabelValues(reason).Inc()
	}
}

// storedAttrs mark a routing event whose envelope is in the store already.
// Read only: shared by every publish.
var storedAttrs = map[string]string{bus.AttrStored: "1"}

// commit makes a's message durable and hands its routing event on; an
// error means nothing was accepted. The message is encoded here, once:
// its wire form is the routing event's body. A stored message is put
// (putNew) and then handed on; an ephemeral one is never stored: it is
// accepted once the bus holds it. (A batch accepted in one store commit
// is the same two steps: one putNew of all its messages, then handOn for
// each stored one.)
func (c *Core) commit(ctx context.Context, a accepting, msg store.NewMessage) error {
	env := a.env
	wire := envelope.AppendJSON(make([]byte, 0, envelope.JSONLen(env, len(a.payload))), env, a.payload)
	if !env.Ephemeral {
		stored, err := c.putNew(ctx, []store.NewMessage{msg})
		if err != nil {
			return err
		}
		if len(stored) == 1 && !stored[0] {
			return nil // a retry whose claim an earlier attempt took: stored (and routed) by that one
		}
		env.Payload = nil // stored: the wire form carries it from here
	}
	return c.handOn(ctx, env, wire)
}

// putNew puts msgs in the store as new messages (PutNew, each under its
// claim if any) and reports which it stored. The durable point of a
// message is there: concurrent accepts share one commit (and one fsync)
// through the store's group commit, and the answer waits for it, even if
// the caller goes away, so that it says what happened. A put whose claim
// another attempt took stores nothing (false): that attempt stored the
// message, and routes it.
func (c *Core) putNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.AcceptTimeout)
	defer cancel()
	var spans []trace.Span // one per message
	if c.tracer != nil {
		spans = make([]trace.Span, len(msgs))
		for i, m := range msgs {
			var sctx context.Context
			sctx, spans[i] = telemetry.Start(cctx, c.tracer, "store write", trace.SpanKindInternal)
			spans[i].SetAttributes(telemetry.AttrMessageID.String(m.Envelope.ID))
			if len(msgs) == 1 {
				cctx = sctx
			}
		}
	}
	stored, err := c.store.PutNew(cctx, msgs)
	endSpans(spans, err)
	if err != nil {
		c.log.WarnContext(ctx, "store accepted message failed", "id", msgs[0].Envelope.ID, "count", len(msgs), "err", err)
		return nil, unavailable("store")
	}
	return stored, nil
}

// handOn hands the routing event of an accepted message, whose wire form
// is wire, on: to this instance's routing in process (the hand-off) when
// it takes it, else on the ingress topic (marked stored unless the message
// is ephemeral). If that publish fails a stored message is still accepted,
// and the sweep of unrouted messages routes it; an ephemeral one is not
// accepted.
func (c *Core) handOn(ctx context.Context, env *envelope.Envelope, wire []byte) error {
	m := &bus.Message{ID: env.ID, Data: wire, OrderingKey: env.Recipient}
	if !env.Ephemeral {
		m.Attributes = storedAttrs
	}
	// This instance's own routing takes the event in process when it has
	// room: a stored message's, and an ephemeral one's, which is then
	// delivered to a recipient connected here with no disk and no bus on
	// its way (lost, like any ephemeral message, if the instance dies
	// before it is delivered: at most once).
	if c.handoff != nil {
		ev := Event{Envelope: env, Data: wire, Stored: !env.Ephemeral}
		if c.tracer != nil {
			ev.Trace = trace.SpanContextFromContext(ctx)
		}
		if c.offer(ev) {
			return nil
		}
	}
	if err := c.bus.PublishIngress(ctx, m); err != nil {
		if env.Ephemeral {
			c.log.WarnContext(ctx, "publish ingress failed", "id", env.ID, "err", err)
			return unavailable("bus")
		}
		c.log.WarnContext(ctx, "routing event not published; the stored message is routed by the pipeline's sweep", "id", env.ID, "err", err)
		if c.m != nil {
			c.m.RoutingDeferred.Inc()
		}
	}
	return nil
}

// validKey reports whether k is an idempotency key's shape: 1-64 of
// [A-Za-z0-9_-].
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
