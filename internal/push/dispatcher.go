package push

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/go-routing-service/routingservice/internal/batch"
	"github.com/go-routing-service/routingservice/internal/store"
)

// Outcomes counted by the dispatcher, the values of the "outcome" label of
// routing_push_notifications_total.
const (
	// OutcomeSent: a push was accepted by the provider for one target.
	OutcomeSent = "sent"
	// OutcomeCoalesced: a notification arrived inside its recipient's
	// coalescing window and got no push of its own.
	OutcomeCoalesced = "coalesced"
	// OutcomeDropped: a notification found the queue full, or a target's
	// platform has no sender.
	OutcomeDropped = "dropped"
	// OutcomeFailed: a target lookup or a send failed (the target is kept).
	OutcomeFailed = "failed"
	// OutcomeRemoved: the provider said the target is gone; it was deleted.
	OutcomeRemoved = "removed"
)

// PlatformAll is the "platform" label of outcomes decided before a
// recipient's targets are known (coalesced, dropped from the queue, failed
// lookups).
const PlatformAll = "all"

// DispatcherOptions tunes a Dispatcher. Zero fields take the defaults.
type DispatcherOptions struct {
	// CoalesceWindow: at most one push per recipient per window (default 5s).
	CoalesceWindow time.Duration
	// Concurrency is the number of recipients served at once, hence the
	// bound on concurrent Send calls (default 16).
	Concurrency int
	// Timeout bounds each target lookup, the sends to one recipient's
	// targets (made in parallel, provider retries included, all within the
	// one budget) and each target deletion (default 10s).
	Timeout time.Duration
	// BreakerFailures consecutive failed sends to one host (a Web Push
	// service's host; FCM; APNs) open its circuit for BreakerCooldown:
	// sends to that host then fail at once, without a request, so that a
	// slow or failing host cannot hold the workers that other recipients'
	// pushes need. After the cooldown one send probes the host; a success
	// closes the circuit. Defaults: 5 failures, 30s.
	BreakerFailures int
	BreakerCooldown time.Duration
	// QueueSize is the number of notifications waiting for the dispatcher
	// before Notify drops (default 1024).
	QueueSize int
	// LeadingOnly turns off the trailing push. By default, when
	// notifications were coalesced inside a window, the latest of them is
	// pushed when the window ends (which opens the next window), so that a
	// message arriving just after a device was woken still wakes it.
	LeadingOnly bool
	// Logger receives send failures and removals (nil: discard). Payloads
	// and push tokens are never logged.
	Logger *slog.Logger
	// Registerer, when not nil, registers the counter
	// routing_push_notifications_total{outcome,platform}.
	Registerer prometheus.Registerer
	// Now is the clock that opens and closes windows (nil: time.Now).
	Now func() time.Time
	// TracerProvider, when set, traces each dispatch and each send (with
	// its platform and outcome) under the notification's Trace. Push
	// tokens and endpoints are never recorded.
	TracerProvider trace.TracerProvider
}

// Dispatcher turns notifications into pushes on the recipient's targets:
// it coalesces them per recipient, looks the targets up, sends with bounded
// concurrency and a per-send timeout, and deletes targets the provider
// reports gone. Notify may be called before, during and after Run.
type Dispatcher struct {
	targets  store.Targets
	senders  map[string]Sender
	o        DispatcherOptions
	log      *slog.Logger
	queue    chan Notification
	outcomes *prometheus.CounterVec
	running  atomic.Bool
	breaker  *breaker
	tracer   trace.Tracer // nil when tracing is off

	// Owned by the Run goroutine.
	windows map[string]*window
	ends    endHeap
}

// window is one recipient's coalescing window.
type window struct {
	until   time.Time
	pending *Notification // latest coalesced notification, for the trailing push
	// noTargets is set by a worker that found the recipient has no target:
	// the window then needs no trailing push (and no second lookup).
	noTargets atomic.Bool
}

type job struct {
	n Notification
	w *window
}

// NewDispatcher returns a dispatcher that sends to targets through senders
// (one per platform; a later sender for the same platform wins).
func NewDispatcher(targets store.Targets, senders []Sender, o DispatcherOptions) *Dispatcher {
	if o.CoalesceWindow <= 0 {
		o.CoalesceWindow = 5 * time.Second
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.BreakerFailures <= 0 {
		o.BreakerFailures = 5
	}
	if o.BreakerCooldown <= 0 {
		o.BreakerCooldown = 30 * time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dispatcher{
		targets: targets,
		senders: make(map[string]Sender),
		o:       o,
		log:     log.With("component", "push"),
		queue:   make(chan Notification, o.QueueSize),
		windows: make(map[string]*window),
		breaker: newBreaker(o.BreakerFailures, o.BreakerCooldown),
	}
	if o.TracerProvider != nil {
		if _, off := o.TracerProvider.(noop.TracerProvider); !off {
			d.tracer = o.TracerProvider.Tracer("github.com/go-routing-service/routingservice/internal/push")
		}
	}
	for _, s := range senders {
		for _, p := range s.Platforms() {
			d.senders[p] = s
		}
	}
	d.outcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "routing_push_notifications_total",
		Help: "Push notifications by outcome (sent, coalesced, dropped, failed, removed) and target platform.",
	}, []string{"outcome", "platform"})
	if o.Registerer != nil {
		if err := o.Registerer.Register(d.outcomes); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
					d.outcomes = existing
				}
			} else {
				d.log.Warn("push metrics not registered", "err", err)
			}
		}
	}
	return d
}

// Notify queues n for its recipient. It never blocks and never fails: when
// the queue is full, n is dropped and counted.
func (d *Dispatcher) Notify(n Notification) {
	select {
	case d.queue <- n:
	default:
		d.count(OutcomeDropped, PlatformAll)
	}
}

// Count returns the number of notifications counted with outcome on
// platform so far (see the Outcome constants and PlatformAll).
func (d *Dispatcher) Count(outcome, platform string) float64 {
	c, err := d.outcomes.GetMetricWithLabelValues(outcome, platform)
	if err != nil {
		return 0
	}
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// Run owns the dispatcher's workers until ctx is done. It then drains: the
// notifications already queued are dispatched, in-flight sends finish
// (each within Timeout), pending trailing pushes are abandoned, and Run
// returns nil. It returns an error only if called while already running.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return errors.New("push dispatcher: Run called twice")
	}
	defer d.running.Store(false)

	// Sends outlive ctx so that shutdown finishes what it started; each one
	// is still bounded by Timeout.
	sendCtx := context.WithoutCancel(ctx)
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range d.o.Concurrency {
		wg.Go(func() {
			for j := range jobs {
				d.deliver(sendCtx, j)
			}
		})
	}
	defer func() {
		close(jobs)
		wg.Wait()
	}()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case n := <-d.queue:
			d.admit(n, jobs)
		case <-timer.C:
			d.expire(jobs)
		case <-ctx.Done():
			batch.Drain(d.queue, func(n Notification) bool {
				d.admit(n, jobs)
				return true
			})
			if p := d.pendingTrailing(); p > 0 {
				d.log.Debug("push dispatcher stopping with trailing pushes not sent", "count", p)
			}
			return nil
		}
		if len(d.ends) > 0 {
			timer.Reset(max(d.ends[0].until.Sub(d.o.Now()), 0))
		}
	}
}

// admit applies coalescing to n and hands it to a worker if it opens a window.
func (d *Dispatcher) admit(n Notification, jobs chan<- job) {
	now := d.o.Now()
	if w := d.windows[n.Recipient]; w != nil && now.Before(w.until) {
		d.count(OutcomeCoalesced, PlatformAll)
		if d.tracer != nil && n.Trace.IsValid() {
			_, span := d.tracer.Start(trace.ContextWithSpanContext(context.Background(), n.Trace), "push coalesced")
			span.SetAttributes(attribute.String("messaging.message.id", n.MessageID), attribute.String("routing.outcome", OutcomeCoalesced))
			span.End()
		}
		if !d.o.LeadingOnly && !w.noTargets.Load() {
			w.pending = &n
		}
		return
	}
	d.open(n, now, jobs)
}

// open starts a recipient's window with a push of n.
func (d *Dispatcher) open(n Notification, now time.Time, jobs chan<- job) {
	w := &window{until: now.Add(d.o.CoalesceWindow)}
	d.windows[n.Recipient] = w
	heap.Push(&d.ends, windowEnd{until: w.until, recipient: n.Recipient})
	jobs <- job{n: n, w: w}
}

// expire closes the windows that ended, sending their trailing pushes.
func (d *Dispatcher) expire(jobs chan<- job) {
	now := d.o.Now()
	for len(d.ends) > 0 && !d.ends[0].until.After(now) {
		e := heap.Pop(&d.ends).(windowEnd)
		w := d.windows[e.recipient]
		if w == nil || !w.until.Equal(e.until) {
			continue // superseded by a newer window
		}
		if w.pending != nil && !w.noTargets.Load() {
			d.open(*w.pending, now, jobs)
			continue
		}
		delete(d.windows, e.recipient)
	}
}

func (d *Dispatcher) pendingTrailing() int {
	n := 0
	for _, w := range d.windows {
		if w.pending != nil {
			n++
		}
	}
	return n
}

// deliver looks up the recipient's targets and sends n to all of them at
// once, within one Timeout, skipping those whose host's circuit is open.
func (d *Dispatcher) deliver(ctx context.Context, j job) {
	n := j.n
	var span trace.Span
	if d.tracer != nil && n.Trace.IsValid() {
		ctx, span = d.tracer.Start(trace.ContextWithSpanContext(ctx, n.Trace), "push dispatch")
		span.SetAttributes(attribute.String("messaging.message.id", n.MessageID))
		defer span.End()
	}
	lctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	targets, err := d.targets.Targets(lctx, n.Recipient)
	cancel()
	if span != nil {
		span.SetAttributes(attribute.Int("routing.count", len(targets)))
	}
	if err != nil {
		d.count(OutcomeFailed, PlatformAll)
		d.log.Warn("push target lookup failed", "recipient", n.Recipient, "err", err)
		return
	}
	if len(targets) == 0 {
		j.w.noTargets.Store(true)
		return
	}
	sctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, t := range targets {
		platform := platformLabel(t.Platform)
		s := d.senders[t.Platform]
		if s == nil {
			d.count(OutcomeDropped, platform)
			d.log.Debug("no push sender for platform", "platform", platform)
			continue
		}
		host := targetHost(t)
		if !d.breaker.allow(host, d.o.Now()) {
			d.count(OutcomeFailed, platform)
			d.log.Debug("push skipped: circuit open", "recipient", n.Recipient, "platform", platform, "host", host)
			continue
		}
		wg.Go(func() { d.send(ctx, sctx, s, t, n, platform, host, span != nil) })
	}
	wg.Wait()
}

// send sends n to one target within sctx and acts on the outcome; traced
// records it as a span in the dispatch's trace.
func (d *Dispatcher) send(ctx, sctx context.Context, s Sender, t store.Target, n Notification, platform, host string, traced bool) {
	var sendSpan trace.Span
	if traced {
		sctx, sendSpan = d.tracer.Start(sctx, "push send "+platform, trace.WithSpanKind(trace.SpanKindClient))
	}
	err := s.Send(sctx, t, n)
	d.breaker.record(host, err == nil || errors.Is(err, ErrTargetGone), d.o.Now())
	outcome := OutcomeSent
	switch {
	case err == nil:
		d.count(OutcomeSent, platform)
	case errors.Is(err, ErrTargetGone):
		if derr := d.remove(ctx, n.Recipient, t); derr != nil {
			outcome = OutcomeFailed
			d.count(OutcomeFailed, platform)
			d.log.WarnContext(ctx, "push target gone but not removed", "recipient", n.Recipient, "platform", platform, "err", derr)
			break
		}
		outcome = OutcomeRemoved
		d.count(OutcomeRemoved, platform)
		d.log.InfoContext(ctx, "push target gone, removed", "recipient", n.Recipient, "platform", platform, "host", host, "reason", err)
	default:
		outcome = OutcomeFailed
		d.count(OutcomeFailed, platform)
		d.log.WarnContext(ctx, "push send failed", "recipient", n.Recipient, "platform", platform, "host", host, "err", err)
	}
	if sendSpan != nil {
		// The outcome only: a provider's error text may quote the
		// target's endpoint, which is a capability.
		sendSpan.SetAttributes(attribute.String("routing.push.platform", platform), attribute.String("routing.outcome", outcome))
		if outcome == OutcomeFailed {
			sendSpan.SetStatus(codes.Error, outcome)
		}
		sendSpan.End()
	}
}

func (d *Dispatcher) remove(ctx context.Context, user string, t store.Target) error {
	ctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	if err := d.targets.DeleteTarget(ctx, user, t); err != nil {
		return fmt.Errorf("delete push target: %w", err)
	}
	return nil
}

func (d *Dispatcher) count(outcome, platform string) {
	d.outcomes.WithLabelValues(outcome, platform).Inc()
}

// platformLabel bounds the label's values to the known platforms.
func platformLabel(p string) string {
	switch p {
	case "android", "ios", "apns", "webpush":
		return p
	}
	return "unknown"
}

// windowEnd is a window's closing time in the heap of closing times.
type windowEnd struct {
	until     time.Time
	recipient string
}

type endHeap []windowEnd

func (h endHeap) Len() int           { return len(h) }
func (h endHeap) Less(i, j int) bool { return h[i].until.Before(h[j].until) }
func (h endHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *endHeap) Push(x any)        { *h = append(*h, x.(windowEnd)) }
func (h *endHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
