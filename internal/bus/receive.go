package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/batch"
	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/ident"
)

// ReceiveIngress calls h for each ingress message, through the shared
// ingress subscription, Concurrency handlers at once, until ctx is done (it
// returns nil) or the bus is closed (it returns ErrClosed). Handlers get a
// context cancelled at that moment, and ReceiveIngress returns only after
// they have returned.
func (b *Bus) ReceiveIngress(ctx context.Context, h Handler) error {
	return b.receive(ctx, QueueIngress, "", 1, single(h))
}

// ReceiveIngressBatch is ReceiveIngress with a BatchHandler: each worker
// hands the handler what is waiting for it (at most max messages; the
// messages of one ordering key always go to the same worker, in bus
// order), so that one store commit can cover them. A batch is formed from
// what is already waiting, never by delaying a message.
func (b *Bus) ReceiveIngressBatch(ctx context.Context, max int, h BatchHandler) error {
	return b.receive(ctx, QueueIngress, "", max, h)
}

// ReceiveDelivery calls h for each delivery event addressed to instance,
// through that instance's own subscription (created if needed), with
// DeliveryConcurrency handlers at once. It behaves as ReceiveIngress
// otherwise.
func (b *Bus) ReceiveDelivery(ctx context.Context, instance string, h Handler) error {
	if instance == "" {
		return errors.New("bus: receive delivery: no instance")
	}
	return b.receive(ctx, QueueDelivery, instance, 1, single(h))
}

func single(h Handler) BatchHandler {
	return func(ctx context.Context, ms []*Message) []error {
		return []error{h(ctx, ms[0])}
	}
}

// received is one received message on its way through a worker.
type received struct {
	dm *driver.Message
	m  *Message
}

// receive subscribes and feeds a pool of workers that call h with up to
// maxBatch messages each, settling every message by its own result. When
// the subscription breaks (engine restarted, consumer deleted) it
// subscribes again with capped backoff, reset by the next success.
func (b *Bus) receive(ctx context.Context, queue, instance string, maxBatch int, h BatchHandler) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.active.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(b.ctx, cancel)
	defer stop()
	end := func() error {
		if b.ctx.Err() != nil {
			return ErrClosed
		}
		return nil
	}

	if queue == QueueDelivery && !ident.Valid(instance) {
		return fmt.Errorf("bus: subscribe %s: instance %q must be 1-64 characters of [A-Za-z0-9_-]", queue, instance)
	}
	// A subscription that cannot be opened at first because the engine
	// is down (it does not answer its ping either: down at start) is
	// tried again like one that broke: the receiver waits for the engine,
	// never gives up. One the engine answers but refuses (its settings)
	// is an error.
	sub, err := b.d.Subscribe(ctx, queue, instance)
	if err != nil {
		if ctx.Err() != nil {
			return end()
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		perr := b.d.Ping(pctx)
		cancel()
		if perr == nil {
			return fmt.Errorf("bus: subscribe %s: %w", queue, err)
		}
		b.log.Warn("subscribing failed; waiting for the bus and subscribing again", "queue", queue, "err", err, "retry_in", b.o.MinBackoff)
		sub = nil
	}
	// open mirrors sub != nil in the bus's subscription state (Subscribed).
	open := false
	state := func(now bool, err error) {
		b.subscribed(queue, open, now, err)
		open = now
	}
	state(sub != nil, err)
	defer func() { state(false, ErrClosed) }()
	maxBatch = min(max(1, maxBatch), b.o.MaxOutstanding)
	// free bounds the messages held unsettled: it holds a token per
	// message that may still be received; one is taken per message
	// received and given back once it is settled.
	free := make(chan struct{}, b.o.MaxOutstanding)
	for range b.o.MaxOutstanding {
		free <- struct{}{}
	}
	g := newGate(func(paused bool) {
		if b.o.OnOutage != nil {
			b.o.OnOutage(queue, paused)
		}
	})
	pool := b.startWorkers(ctx, queue, maxBatch, h, free, g)

	retry := b.o.MinBackoff
	var parked []received // taken while paused, handed out on resume
	for ctx.Err() == nil {
		if sub == nil {
			if !sleep(ctx, retry) {
				break
			}
			// Capped like an outage's retries: the engine is down.
			retry = min(2*retry, b.o.MaxBackoff, b.o.OutageBackoff)
			if sub, err = b.d.Subscribe(ctx, queue, instance); err != nil {
				sub = nil
				if ctx.Err() == nil {
					b.log.Warn("subscribing again failed", "queue", queue, "err", err, "retry_in", retry)
					state(false, err)
				}
				continue
			}
			state(true, nil)
		}
		if g.paused() {
			// A handler waits out an outage: hand out nothing new, but
			// keep what arrives (and what the engine sends ahead) held and
			// extended, so that a long outage costs it no attempt.
			if err := b.park(ctx, sub, g, free, &parked); err != nil {
				if ctx.Err() != nil {
					break
				}
				b.log.Warn("subscription broke; subscribing again", "queue", queue, "err", err, "retry_in", retry)
				_ = sub.Close()
				sub = nil
				state(false, err)
			}
			continue
		}
		for _, r := range parked {
			pool.dispatch(ctx, r, free)
		}
		parked = nil
		n := take(ctx, free, b.o.MaxOutstanding)
		if n == 0 {
			break
		}
		ms, err := sub.Receive(ctx, n)
		for range n - len(ms) {
			free <- struct{}{}
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			b.log.Warn("subscription broke; subscribing again", "queue", queue, "err", err, "retry_in", retry)
			_ = sub.Close()
			sub = nil
			state(false, err)
			continue
		}
		retry = b.o.MinBackoff
		paused := g.paused() // began while this receive waited
		for _, dm := range ms {
			r := received{dm: dm, m: incoming(dm)}
			if paused {
				parked = append(parked, r)
				continue
			}
			pool.dispatch(ctx, r, free)
		}
	}
	for _, r := range parked {
		_ = r.dm.Acker.Nack(0)
		free <- struct{}{}
	}
	pool.stop()
	if sub != nil {
		if err := sub.Close(); err != nil {
			b.log.Warn("closing subscription", "queue", queue, "err", err)
		}
	}
	return end()
}

// park runs one round of a paused receive: it extends the parked messages,
// then waits up to OutageBackoff (or until the pause ends) for more, which
// it parks too, as many as there are free tokens. It returns the
// subscription's error, if it broke.
func (b *Bus) park(ctx context.Context, sub driver.Subscription, g *gate, free chan struct{}, parked *[]received) error {
	b.extend(*parked)
	rctx, cancel := context.WithTimeout(ctx, b.o.OutageBackoff)
	defer cancel()
	stop := context.AfterFunc(g.resumed(), cancel)
	defer stop()
	n := 0
	batch.Drain(free, func(struct{}) bool {
		n++
		return n < b.o.MaxOutstanding
	})
	if n == 0 {
		<-rctx.Done()
		return nil
	}
	ms, err := sub.Receive(rctx, n)
	for range n - len(ms) {
		free <- struct{}{}
	}
	for _, dm := range ms {
		*parked = append(*parked, received{dm: dm, m: incoming(dm)})
	}
	if err != nil && rctx.Err() == nil {
		return err
	}
	return nil
}

// take waits for one token of free, then takes as many more as are
// there, up to limit; it returns how many it took (0 when ctx ended
// first).
func take(ctx context.Context, free chan struct{}, limit int) int {
	select {
	case <-free:
	case <-ctx.Done():
		return 0
	}
	n := 1
	if n < limit {
		batch.Drain(free, func(struct{}) bool {
			n++
			return n < limit
		})
	}
	return n
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// workers run handlers. The messages of one ordering key always go to the
// same worker, so they are handled one at a time, in bus order; messages
// without a key go to whichever worker is free. A worker's own channel
// holds up to maxBatch-1 waiting messages, which it takes as one batch.
type workers struct {
	shared chan received
	keyed  []chan received
	wg     sync.WaitGroup
}

func (b *Bus) startWorkers(ctx context.Context, queue string, maxBatch int, h BatchHandler, free chan struct{}, g *gate) *workers {
	n := b.o.Concurrency
	if queue == QueueDelivery {
		n = b.o.DeliveryConcurrency
	}
	p := &workers{shared: make(chan received), keyed: make([]chan received, n)}
	for i := range p.keyed {
		own, sh := make(chan received, maxBatch-1), p.shared
		p.keyed[i] = own
		items := make([]received, 0, maxBatch)
		p.wg.Go(func() {
			for own != nil || sh != nil {
				select {
				case r, ok := <-own:
					if !ok {
						own = nil
						continue
					}
					if items, ok = batch.Fill(append(items[:0], r), own, maxBatch); !ok {
						own = nil
					}
				case r, ok := <-sh:
					if !ok {
						sh = nil
						continue
					}
					items = append(items[:0], r)
				}
				b.runAll(ctx, queue, maxBatch, h, items, g)
				for range items {
					free <- struct{}{}
				}
				clear(items)
			}
		})
	}
	return p
}

// dispatch hands r to its worker; when ctx ends first, r is released for
// redelivery.
func (p *workers) dispatch(ctx context.Context, r received, free chan struct{}) {
	c := p.shared
	if r.dm.OrderingKey != "" {
		c = p.keyed[fnv32(r.dm.OrderingKey)%uint32(len(p.keyed))]
	}
	select {
	case c <- r:
	case <-ctx.Done():
		_ = r.dm.Acker.Nack(0)
		free <- struct{}{}
	}
}

// stop closes the workers' channels and waits for them to finish what they hold.
func (p *workers) stop() {
	close(p.shared)
	for _, c := range p.keyed {
		close(c)
	}
	p.wg.Wait()
}

// fnv32 is the FNV-1a hash of s.
func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// runAll runs a worker's batch: packs one by one, the events of each in
// turn (runPack), and the messages between them as batches (run).
func (b *Bus) runAll(ctx context.Context, queue string, maxBatch int, h BatchHandler, batch []received, g *gate) {
	start := 0
	for i, r := range batch {
		if !isPack(r.dm) {
			continue
		}
		if start < i {
			b.run(ctx, queue, h, batch[start:i], g)
		}
		b.runPack(ctx, queue, maxBatch, h, r, g)
		start = i + 1
	}
	if start < len(batch) {
		b.run(ctx, queue, h, batch[start:], g)
	}
}

// extend restarts the ack deadline of messages held back, on an engine
// that needs it (Capabilities.Extend); best effort: a message whose
// extension fails is redelivered by the engine later.
func (b *Bus) extend(held []received) {
	if !b.caps.Extend {
		return
	}
	for _, r := range held {
		_ = r.dm.Acker.Extend()
	}
}

// run calls h on a batch and settles each message by its result. Messages
// whose handler answered ErrUnavailable are kept, with the receive call
// paused (g), and handed to h again with capped backoff (at once when the
// bus takes publishes again after failing them) until it answers
// something else or ctx ends.
func (b *Bus) run(ctx context.Context, queue string, h BatchHandler, batch []received, g *gate) {
	held := b.runOnce(ctx, queue, h, batch)
	if len(held) == 0 {
		return
	}
	g.hold()
	defer g.release()
	delay := b.o.MinBackoff
	for len(held) > 0 {
		b.log.Warn("backend unavailable; holding messages and retrying", "queue", queue, "messages", len(held), "retry_in", delay)
		// The bus's own recovery ends the wait at once.
		if !b.sleepUntilRecovered(ctx, delay) {
			for _, r := range held {
				if err := r.dm.Acker.Nack(0); err != nil {
					b.log.Warn("releasing a held message failed; it will be redelivered after the ack deadline", "queue", queue, "id", r.m.ID, "err", err)
				}
			}
			return
		}
		delay = min(2*delay, b.o.OutageBackoff)
		b.extend(held)
		held = b.runOnce(ctx, queue, h, held)
	}
	b.log.Info("backend available again; resuming", "queue", queue)
}

// runOnce calls h on a batch, settles each message by its result, and
// returns those whose handler answered ErrUnavailable (unsettled, in
// order) while ctx lives.
func (b *Bus) runOnce(ctx context.Context, queue string, h BatchHandler, batch []received) []received {
	ms := make([]*Message, len(batch))
	for i, r := range batch {
		ms[i] = r.m
	}
	hctx := ctx
	var spans []trace.Span
	if b.tracer != nil {
		// One processing span per message, each continuing its own
		// message's trace, batch or not.
		spans = make([]trace.Span, len(batch))
		for i, r := range batch {
			spans[i] = b.startProcess(ctx, queue, r)
			r.m.Trace = spans[i].SpanContext()
		}
		if len(batch) == 1 {
			hctx = trace.ContextWithSpan(ctx, spans[0])
		}
	}
	errs := h(hctx, ms)
	var held []received
	for i, r := range batch {
		var err error
		if i < len(errs) {
			err = errs[i]
		} else {
			err = errors.New("batch handler returned too few results")
		}
		if err != nil && errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrPermanent) && ctx.Err() == nil {
			held = append(held, r)
			if spans != nil {
				endProcess(spans[i], outcomeHeld, err)
			}
			continue
		}
		outcome := b.settle(ctx, queue, r, err)
		if spans != nil {
			endProcess(spans[i], outcome, err)
		}
	}
	return held
}

// gate pauses a receive call while any of its workers waits out an outage.
type gate struct {
	mu       sync.Mutex
	n        int
	pause    context.Context // ends when the current pause ends
	resume   context.CancelFunc
	onChange func(paused bool)
}

func newGate(onChange func(paused bool)) *gate {
	g := &gate{onChange: onChange}
	g.pause, g.resume = context.WithCancel(context.Background())
	g.resume()
	return g
}

func (g *gate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n == 0 {
		g.pause, g.resume = context.WithCancel(context.Background())
		g.onChange(true)
	}
	g.n++
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.n == 0 {
		g.resume()
		g.onChange(false)
	}
}

// paused reports whether a worker holds the gate.
func (g *gate) paused() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n > 0
}

// resumed is a context that ends when the current pause ends.
func (g *gate) resumed() context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pause
}

// deadLetterTimeout bounds the copy of a message into a dead-letter queue,
// which runs even when the receiver is stopping so that the message is not
// retried past its last attempt.
const deadLetterTimeout = 30 * time.Second

// settle acks, nacks or dead-letters a message by its handler's result: ack
// on success; release at once when the handler was interrupted by shutdown
// (never dead-lettered for that); dead-letter on a permanent error or on
// the last attempt; otherwise nack with backoff. It returns the outcome
// (for the message's processing span).
func (b *Bus) settle(ctx context.Context, queue string, r received, err error) string {
	m, ack := r.m, r.dm.Acker
	lctx := ContextOf(ctx, m) // logs carry the message's trace
	permanent := errors.Is(err, ErrPermanent)
	switch {
	case err == nil:
		if aerr := ack.Ack(); aerr != nil {
			b.log.WarnContext(lctx, "ack failed; the message will be redelivered", "queue", queue, "id", m.ID, "err", aerr)
		}
		return outcomeAck
	case ctx.Err() != nil && !permanent:
		if nerr := ack.Nack(0); nerr != nil {
			b.log.WarnContext(lctx, "releasing an interrupted message failed; it will be redelivered after the ack deadline", "queue", queue, "id", m.ID, "err", nerr)
		}
		return outcomeReleased
	case permanent || m.DeliveryAttempt >= b.o.MaxDeliveryAttempts:
		reason := err.Error()
		if !permanent {
			reason = "delivery attempts exhausted: " + reason
		}
		var span trace.Span
		if b.tracer != nil {
			span = b.startDeadLetter(ctx, queue, m, reason)
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deadLetterTimeout)
		derr := b.d.DeadLetter(dctx, queue, deadCopy(r.dm, reason, m.DeliveryAttempt))
		cancel()
		if span != nil {
			endSpan(span, derr)
		}
		if derr != nil {
			b.log.ErrorContext(lctx, "dead-lettering failed; the message will be redelivered", "queue", queue, "id", m.ID, "err", derr)
			_ = ack.Nack(b.backoff(m.DeliveryAttempt))
			return outcomeRetry
		}
		if aerr := ack.Ack(); aerr != nil {
			b.log.WarnContext(lctx, "ack of a dead-lettered message failed; it may be dead-lettered twice", "queue", queue, "id", m.ID, "err", aerr)
		}
		b.log.WarnContext(lctx, "message dead-lettered", "queue", queue, "id", m.ID, "attempts", m.DeliveryAttempt, "reason", reason)
		b.deadLettered(queue, reason)
		return outcomeDead
	default:
		if nerr := ack.Nack(b.backoff(m.DeliveryAttempt)); nerr != nil {
			b.log.WarnContext(lctx, "nack failed; the message will be redelivered after the ack deadline", "queue", queue, "id", m.ID, "err", nerr)
		}
		return outcomeRetry
	}
}

// backoff is the redelivery delay after the given failed attempt.
func (b *Bus) backoff(attempt int) time.Duration {
	d := b.o.MinBackoff
	for i := 1; i < attempt && d < b.o.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, b.o.MaxBackoff)
}
