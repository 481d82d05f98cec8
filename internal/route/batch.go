package route

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// batchWorkers bounds the store calls one AcceptBatch makes at once for
// its messages one by one (idempotency reservations and releases, pending
// counts): an engine that runs them in parallel (PostgreSQL) answers a
// batch of many keys sooner, and one batch does not take every
// connection of the pool.
const batchWorkers = 8

// batchItem is one message of a batch on its way through AcceptBatch.
type batchItem struct {
	a accepting
	// key is the message's idempotency key ("" for none).
	key string
	// fresh: this call reserved key (it releases it if the batch fails).
	fresh bool
	// put: the message is to be stored by the batch's commit, under the
	// claim of the record of claim when not "". retry: it is a message
	// an earlier sending reserved and did not finish, put under that
	// record's id (with a tombstone check, as Accept does).
	put   bool
	claim string
	retry bool
	// answer is the record's answer for a message accepted before.
	answer Accepted
}

// AcceptBatch accepts msgs together: once it returns without an error,
// every one of them is committed to the store, all in one store call
// (PutNew: one transaction of the store's group commit), and will reach
// its recipient; the answers are in the order of msgs. With an error
// nothing was accepted: an *ItemError names the message at fault (it
// breaks the contract, its payload is too large, its idempotency key is
// another message's of the batch or held by another message, its
// recipient's queue is full), an *Error the batch as a whole (the
// sender's quota, a backend down, routing overloaded).
//
// A message whose idempotency key was accepted before (by an earlier
// sending of the batch, or alone) answers as it did then and is neither
// stored nor delivered again, as with Accept; the batch's other messages
// are accepted as usual. The same key twice in msgs from one sender is
// refused (KindInvalid, the index of the second).
//
// Ephemeral messages are refused (KindInvalid, FieldEphemeral): never
// stored, they cannot be part of the batch's one commit, and their
// publishes, one per message, could fail after some went out, so that a
// batch holding them could be neither all or nothing nor say which were
// delivered. They are sent one at a time.
//
// The recipients' queues and the sender's quota are checked for the
// messages the batch stores anew only, once the keys are reserved, so that
// a batch sent again answers as it did even when its first sending filled
// a queue. A recipient with k messages in the batch needs room for k.
func (c *Core) AcceptBatch(ctx context.Context, msgs []Message) ([]Accepted, error) {
	if len(msgs) == 0 {
		return nil, invalid("messages", "a batch holds at least one message")
	}
	if c.tracer != nil {
		var span trace.Span
		ctx, span = c.tracer.Start(ctx, "accept batch")
		span.SetAttributes(telemetry.AttrCount.Int(len(msgs)))
		defer span.End()
	}
	items, err := c.checkBatch(msgs)
	if err != nil {
		return nil, err // bad input is answered as such, overloaded or not
	}
	if c.backlog.overloaded() {
		c.refusedN("backlog", len(msgs))
		return nil, errOverloaded
	}
	callerCtx := ctx
	ctx, cancel := context.WithTimeout(ctx, c.o.AcceptTimeout)
	defer cancel()
	if err := c.reserveBatch(ctx, items); err != nil {
		c.releaseBatch(callerCtx, items)
		return nil, err
	}
	if err := c.checkBatchQuotas(ctx, items); err != nil {
		c.releaseBatch(callerCtx, items)
		var re *Error
		if errors.As(err, &re) && (re.Kind == KindQueueFull || re.Kind == KindSenderQuota) {
			reason := "recipient_queue_full"
			if re.Kind == KindSenderQuota {
				reason = "sender_quota_exceeded"
			}
			c.refusedN(reason, len(msgs))
		}
		return nil, err
	}

	// One commit for every message to store; each is encoded once, its
	// wire form the routing event's body.
	puts := make([]store.NewMessage, 0, len(items))
	at := make([]int, 0, len(items))
	wires := make([][]byte, len(items))
	for i := range items {
		it := &items[i]
		if !it.put {
			continue
		}
		env := it.a.env
		wires[i] = envelope.AppendJSON(make([]byte, 0, envelope.JSONLen(env, len(it.a.payload))), env, it.a.payload)
		puts = append(puts, store.NewMessage{Envelope: env, Key: it.claim, CheckTombstone: it.retry})
		at = append(at, i)
	}
	if len(puts) > 0 {
		stored, err := c.putNew(ctx, puts)
		if err != nil {
			c.releaseBatch(callerCtx, items)
			return nil, err
		}
		for j, i := range at {
			if !stored[j] {
				continue // a retry whose claim an earlier attempt took: stored (and routed) by that one
			}
			env := items[i].a.env
			env.Payload = nil // stored: the wire form carries it from here
			// A stored message is accepted whatever the hand-on does.
			_ = c.handOn(ctx, env, wires[i])
		}
	}
	out := make([]Accepted, len(items))
	accepted := 0
	for i := range items {
		it := &items[i]
		switch {
		case it.put && !it.retry:
			out[i] = Accepted{ID: it.a.env.ID, CreatedAt: it.a.env.CreatedAt}
			accepted++
		default:
			out[i] = it.answer
		}
	}
	if c.m != nil && accepted > 0 {
		c.m.MessagesAccepted.WithLabelValues("false").Add(float64(accepted))
	}
	return out, nil
}

// checkBatch checks each message as Accept does, refuses ephemeral ones
// and a key given twice, and makes the batch's items.
func (c *Core) checkBatch(msgs []Message) ([]batchItem, error) {
	items := make([]batchItem, len(msgs))
	var keys map[[2]string]int
	for i, msg := range msgs {
		if msg.Ephemeral {
			return nil, &ItemError{Index: i, Err: invalid(FieldEphemeral,
				"ephemeral messages are not accepted in a batch (never stored, they cannot be part of its one commit): send them one at a time")}
		}
		a, err := c.check(msg)
		if err != nil {
			var re *Error
			if !errors.As(err, &re) {
				re = invalid("", err.Error())
			}
			return nil, &ItemError{Index: i, Err: re}
		}
		if k := msg.IdempotencyKey; k != "" {
			if keys == nil {
				keys = make(map[[2]string]int)
			}
			id := [2]string{msg.Sender, k}
			if j, dup := keys[id]; dup {
				return nil, &ItemError{Index: i, Err: invalid(FieldIdempotencyKey,
					"idempotency_key is also the key of message "+strconv.Itoa(j)+" of the batch: each message needs its own key")}
			}
			keys[id] = i
		}
		items[i] = batchItem{a: a, key: msg.IdempotencyKey, put: true}
	}
	return items, nil
}

// reserveBatch reserves the idempotency keys of the items that have one,
// as Accept does: a fresh key is claimed by the batch's commit; a key
// accepted before gives its answer and stores nothing; one reserved
// before and not accepted, for the same message, has it stored under the
// record's id; for another message it is KindKeyReused, unless the
// record's message is stored already. The error of the lowest index
// wins; the keys reserved meanwhile are the caller's to release.
func (c *Core) reserveBatch(ctx context.Context, items []batchItem) error {
	return forEach(len(items), func(i int) error {
		it := &items[i]
		if it.key == "" {
			return nil
		}
		env := it.a.env
		hash := store.EnvelopeHash(env)
		rec, fresh, err := c.store.ReserveIdempotency(ctx, store.Idempotency{Sender: env.Sender, Key: it.key,
			ID: env.ID, CreatedAt: env.CreatedAt, RequestHash: hash})
		if err != nil {
			c.log.WarnContext(ctx, "idempotency reserve failed", "err", err)
			return unavailable("store")
		}
		if fresh {
			it.fresh, it.claim = true, it.key
			return nil
		}
		if c.m != nil {
			c.m.IdempotentHits.Inc()
		}
		it.answer = Accepted{ID: rec.ID, CreatedAt: rec.CreatedAt}
		switch {
		case rec.Published:
			it.put = false
		case bytes.Equal(rec.RequestHash, hash):
			env.ID, env.CreatedAt = rec.ID, rec.CreatedAt
			it.claim, it.retry = rec.Key, true
		default:
			stored, err := c.store.Stored(ctx, []string{rec.ID})
			if err != nil {
				c.log.WarnContext(ctx, "idempotency stored check failed", "id", rec.ID, "err", err)
				return unavailable("store")
			}
			if len(stored) == 0 {
				return &ItemError{Index: i, Err: &Error{Kind: KindKeyReused, Field: FieldIdempotencyKey, RetryAfter: time.Second,
					Message: "idempotency_key is held by another message whose sending has not finished; nothing was accepted: send the same message again with this key, or use a new key"}}
			}
			it.put = false
			c.markPublished(ctx, rec.Sender, rec.Key, rec.ID)
		}
		return nil
	})
}

// releaseBatch releases the keys this batch reserved, once it failed.
func (c *Core) releaseBatch(callerCtx context.Context, items []batchItem) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(callerCtx), 5*time.Second)
	defer cancel()
	_ = forEach(len(items), func(i int) error {
		it := &items[i]
		if !it.fresh {
			return nil
		}
		if err := c.store.ReleaseIdempotency(rctx, it.a.env.Sender, it.key); err != nil {
			// The key stays reserved for an envelope never accepted: a
			// retry with it accepts that envelope, with its id.
			c.log.Warn("idempotency release failed", "id", it.a.env.ID, "err", err)
		}
		return nil
	})
}

// tally counts the messages of a batch that one recipient or sender would
// have pending anew.
type tally struct {
	key   string
	first int // the index of its first message
	n     int
	bytes int64
}

// checkBatchQuotas checks the recipients' queues and the senders' quotas
// for the messages the batch stores anew (not those accepted before): a
// full queue is an *ItemError naming the first message to that
// recipient.
func (c *Core) checkBatchQuotas(ctx context.Context, items []batchItem) error {
	perQueue := c.o.MaxPendingPerRecipient > 0
	perSender := c.o.MaxPendingPerSender > 0 || c.o.MaxPendingBytesPerSender > 0
	if !perQueue && !perSender {
		return nil
	}
	var recipients, senders []tally
	ri, si := map[string]int{}, map[string]int{}
	add := func(ts *[]tally, idx map[string]int, key string, i int, size int64) {
		j, ok := idx[key]
		if !ok {
			j = len(*ts)
			idx[key] = j
			*ts = append(*ts, tally{key: key, first: i})
		}
		(*ts)[j].n++
		(*ts)[j].bytes += size
	}
	for i := range items {
		it := &items[i]
		if !it.put || it.retry {
			continue
		}
		env := it.a.env
		add(&recipients, ri, env.Recipient, i, int64(len(env.Payload)))
		add(&senders, si, env.Sender, i, int64(len(env.Payload)))
	}
	if perQueue {
		if err := forEach(len(recipients), func(j int) error {
			if err := c.checkQueueN(ctx, recipients[j].key, recipients[j].n); err != nil {
				var re *Error
				if errors.As(err, &re) && re.Kind == KindQueueFull {
					return &ItemError{Index: recipients[j].first, Err: re}
				}
				return err
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if perSender {
		for _, s := range senders {
			if err := c.checkSenderN(ctx, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkQueueN is checkQueue for k messages to recipient: its queue needs
// room for all of them.
func (c *Core) checkQueueN(ctx context.Context, recipient string, k int) error {
	now := time.Now()
	maxN := c.o.MaxPendingPerRecipient
	room := true
	for range k {
		if !c.counts.roomFor(recipient, maxN, 0, 0, now) {
			room = false
			break
		}
	}
	if room {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.AcceptTimeout)
	defer cancel()
	n, err := c.store.PendingCount(ctx, recipient)
	if err != nil {
		c.log.Warn("pending count failed", "err", err)
		return unavailable("store")
	}
	if n+k <= maxN {
		c.counts.read(recipient, n+k-1, 0, 0, now)
		return nil
	}
	return &Error{Kind: KindQueueFull, Field: FieldRecipient,
		Message: "the recipient has " + strconv.Itoa(n) + " pending messages and may have " + strconv.Itoa(maxN) +
			": no room for the " + strconv.Itoa(k) + " of this batch; nothing was accepted"}
}

// checkSenderN is checkSender for the messages of a batch from one
// sender (s.n messages, s.bytes payload bytes).
func (c *Core) checkSenderN(ctx context.Context, s tally) error {
	now := time.Now()
	maxN, maxBytes := c.o.MaxPendingPerSender, c.o.MaxPendingBytesPerSender
	room := true
	per := s.bytes / int64(s.n)
	for range s.n {
		if !c.senders.roomFor(s.key, maxN, maxBytes, per, now) {
			room = false
			break
		}
	}
	if room {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.AcceptTimeout)
	defer cancel()
	n, err := c.store.SenderPending(ctx, s.key)
	if err != nil {
		c.log.Warn("sender pending count failed", "err", err)
		return unavailable("store")
	}
	if (maxN <= 0 || n.Messages+s.n <= maxN) && (maxBytes <= 0 || n.Bytes+s.bytes <= maxBytes) {
		c.senders.read(s.key, n.Messages+s.n-1, n.Bytes+s.bytes, 0, now)
		return nil
	}
	var limits []string
	if maxN > 0 {
		limits = append(limits, strconv.Itoa(maxN)+" messages")
	}
	if maxBytes > 0 {
		limits = append(limits, strconv.FormatInt(maxBytes, 10)+" payload bytes")
	}
	return &Error{Kind: KindSenderQuota, Message: "you have " + strconv.Itoa(n.Messages) + " messages of " + strconv.FormatInt(n.Bytes, 10) +
		" payload bytes waiting for their recipients, and this batch adds " + strconv.Itoa(s.n) + " of " + strconv.FormatInt(s.bytes, 10) +
		"; a sender may have at most " + strings.Join(limits, " and ") + " pending; nothing was accepted; room comes as recipients acknowledge"}
}

// refusedN counts n messages refused for reason.
func (c *Core) refusedN(reason string, n int) {
	if c.m != nil {
		c.m.SendsRefused.WithLabelValues(reason).Add(float64(n))
	}
}

// forEach runs f for each index in [0, n), on up to batchWorkers
// goroutines (on the caller's alone when n is 1), and returns the error
// of the lowest index that failed. Each f touches only what its index
// owns.
func forEach(n int, f func(i int) error) error {
	if n == 1 {
		return f(0)
	}
	errs := make([]error, n)
	var next sync.Mutex
	i := 0
	take := func() (int, bool) {
		next.Lock()
		defer next.Unlock()
		if i >= n {
			return 0, false
		}
		i++
		return i - 1, true
	}
	var wg sync.WaitGroup
	for range min(n, batchWorkers) {
		wg.Go(func() {
			for {
				j, ok := take()
				if !ok {
					return
				}
				errs[j] = f(j)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
