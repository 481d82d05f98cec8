package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-routing-service/routingservice/pkg/client"
)

// load is one sending phase: senders POST one message per request, to
// targets in turn, until the deadline or count.
type load struct {
	senders []*client.Client
	names   []string // recipient URNs
	targets []int    // recipient indexes to send to, in turn
	payload int
	rate    float64   // msg/s in total, 0: flat out
	until   time.Time // zero: no deadline
	count   int64     // 0: no count
	// ephemeral sends every message ephemeral.
	ephemeral bool

	ck      *checker
	offered atomic.Int64
	errs    statusCounts
	sendLat latencies
}

// run sends and returns how long it took.
func (l *load) run(ctx context.Context) time.Duration {
	return l.drive(ctx, len(l.senders), 1, func(s int) func(int64) {
		send, buf := l.senders[s].Send, make([]byte, l.payload)
		return func(n int64) { l.sendOne(ctx, send, buf, n) }
	})
}

func statusOf(err error) int {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func allTargets(n int) []int {
	t := make([]int, n)
	for i := range t {
		t[i] = i
	}
	return t
}

// drain waits, at most d, until nothing is owed.
func drain(ctx context.Context, ck *checker, d time.Duration) {
	deadline := time.Now().Add(d)
	for ck.Outstanding() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

// runDelivery is online (conns 1) and fanout: every recipient holds conns
// WebSockets and acks what it receives; every connection must receive every
// message sent to its recipient.
func runDelivery(ctx context.Context, e *env, conns int) (*summary, error) {
	o := e.o
	names, tokens, stoks, err := e.parties("r", o.recipients)
	if err != nil {
		return nil, err
	}
	ck := newChecker(o.recipients, conns)
	rs := &receivers{ck: ck, wsErrs: &statusCounts{}}
	readCtx, stopRead := context.WithCancel(context.Background())
	defer stopRead()
	t0 := time.Now()
	fmt.Fprintf(e.log, "opening %d WebSockets (%d recipients × %d)\n", o.recipients*conns, o.recipients, conns)
	if err := rs.openAll(ctx, e.wsc, e.t.ws, tokens, conns, 64, readCtx); err != nil {
		rs.closeAll(stopRead)
		return nil, err
	}
	fmt.Fprintf(e.log, "%d WebSockets open in %.2f s\n", rs.open.Load(), time.Since(t0).Seconds())
	ackCtx, stopAck := context.WithCancel(readCtx)
	go rs.ackLoop(ackCtx)
	// The server registers presence before the backlog; give the last ones a moment.
	time.Sleep(200 * time.Millisecond)

	cpu := cpuMeter{procs: o.pids}
	each0, _ := cpu.each()
	cpu0 := sumDurations(each0)
	start := time.Now()
	l := &load{senders: e.clients(stoks), names: names, targets: allTargets(o.recipients),
		payload: o.payload, rate: o.rate, until: start.Add(o.duration), ck: ck, ephemeral: o.ephemeral}
	sr, dr := rater{lastT: start}, rater{lastT: start}
	win := &windows{size: o.window, start: start}
	lastCPU, lastDel := cpu0, int64(0)
	stopProgress := progress(e.log, start, func() string {
		acc, del := ck.accepted.Load(), ck.matched.Load()
		win.tick(time.Now(), del)
		line := fmt.Sprintf("sent %d  accepted %d  delivered %d  owed %d  %.0f accepted/s  %.0f delivered/s  errors %d",
			l.offered.Load(), acc, del, ck.Outstanding(), sr.rate(acc), dr.rate(del), l.errs.Total())
		if len(cpu.procs) > 0 {
			now, _ := cpu.total()
			line += fmt.Sprintf("  server %.0f µs/msg", perMessage(now-lastCPU, del-lastDel))
			lastCPU, lastDel = now, del
		}
		return line
	})
	sendDur, err := e.runLoad(ctx, l)
	if err != nil {
		stopProgress()
		stopAck()
		rs.closeAll(stopRead)
		return nil, err
	}
	drain(ctx, ck, o.drain)
	stopProgress()
	each1, cpuErr := cpu.each()
	cpu1 := sumDurations(each1)
	stopAck()
	rs.closeAll(stopRead)

	s := e.newSummary(conns)
	s.Offered = l.offered.Load()
	s.fill(ck, &l.errs, rs.wsErrs, &l.sendLat, start, sendDur)
	s.Dropped = rs.dropped.Load()
	s.Windows, s.HoldRatio = win.result()
	if len(cpu.procs) > 0 {
		s.ServerPIDs = cpu.pids()
		s.ServerCPU = (cpu1 - cpu0).Seconds()
		s.ServerCPUPerMsg = perMessage(cpu1-cpu0, s.Deliveries)
		s.ServerProcesses = cpu.shares(each0, each1, s.Deliveries)
		if cpuErr != nil {
			s.ServerCPUError = cpuErr.Error()
		}
	}
	return s, nil
}

// runOffline sends -messages to recipients that are not connected, then
// every recipient fetches its backlog page by page and acks each page.
func runOffline(ctx context.Context, e *env) (*summary, error) {
	o := e.o
	names, tokens, stoks, err := e.parties("r", o.recipients)
	if err != nil {
		return nil, err
	}
	ck := newChecker(o.recipients, 1)
	off := &offlineStats{StoredSource: "no metrics: give -metrics"}
	var handled0 float64
	if e.t.scrape != nil {
		handled0, _ = pipelineHandled(ctx, e.t.scrape)
	}

	start := time.Now()
	l := &load{senders: e.clients(stoks), names: names, targets: allTargets(o.recipients),
		payload: o.payload, rate: o.rate, count: int64(o.messages), ck: ck}
	sr := rater{lastT: start}
	var phase atomic.Value
	phase.Store("send")
	var fetched, pages atomic.Int64
	stopProgress := progress(e.log, start, func() string {
		acc := ck.accepted.Load()
		return fmt.Sprintf("%-6s sent %d  accepted %d  %.0f accepted/s  errors %d  fetched %d",
			phase.Load(), l.offered.Load(), acc, sr.rate(acc), l.errs.Total(), fetched.Load())
	})
	defer stopProgress()
	sendDur := l.run(ctx)

	// Wait for the pipeline to have stored what was accepted.
	if e.t.scrape != nil {
		phase.Store("store")
		deadline := time.Now().Add(o.drain)
		off.StoredSource = "pipeline count in /metrics"
		for ctx.Err() == nil {
			n, err := pipelineHandled(ctx, e.t.scrape)
			if err != nil {
				off.StoredSource = "metrics: " + err.Error()
				break
			}
			if n-handled0 >= float64(ck.accepted.Load()) {
				off.StoredSeconds = time.Since(start).Seconds()
				off.StoredPerS = float64(ck.accepted.Load()) / off.StoredSeconds
				break
			}
			if time.Now().After(deadline) {
				off.StoredSource = fmt.Sprintf("pipeline handled %.0f of %d within -drain", n-handled0, ck.accepted.Load())
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	phase.Store("fetch")
	fetchStart := time.Now()
	deadline := fetchStart.Add(o.drain)
	var fetchErrs statusCounts
	var next atomic.Int64
	var wg sync.WaitGroup
	fetchers := e.clients(tokens)
	for range min(o.senders, o.recipients) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r := int(next.Add(1) - 1)
				if r >= o.recipients {
					return
				}
				fetchBacklog(ctx, fetchers[r], r, o.page, deadline, ck, &fetchErrs, &fetched, &pages)
			}
		}()
	}
	wg.Wait()
	off.FetchSeconds = time.Since(fetchStart).Seconds()
	off.Fetched, off.Pages = fetched.Load(), pages.Load()

	s := e.newSummary(0)
	s.Offered = l.offered.Load()
	s.fill(ck, &l.errs, &statusCounts{}, &l.sendLat, start, sendDur)
	for k, v := range fetchErrs.Snapshot() {
		s.Errors[k] += v
	}
	s.DeliveredPerS = 0 // fetched, not delivered live: see FetchSeconds
	s.Offline = off
	return s, nil
}

// fetchBacklog pages through recipient r's pending messages and acks each
// page; while some of r's accepted messages have not shown up (the pipeline
// is behind), it starts again from the oldest, until deadline.
func fetchBacklog(ctx context.Context, c *client.Client, r, limit int, deadline time.Time, ck *checker, errs *statusCounts, fetched, pages *atomic.Int64) {
	for ctx.Err() == nil {
		cursor := ""
		for ctx.Err() == nil {
			p, err := c.Fetch(ctx, cursor, limit)
			if err != nil {
				errs.Add(fmt.Sprintf("fetch %d", statusOf(err)))
				if ck.OwedTo(r) <= 0 || time.Now().After(deadline) {
					return
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			pages.Add(1)
			ids := make([]string, len(p.Messages))
			for i, m := range p.Messages {
				ids[i] = m.ID
				ck.Received(m.ID, r, 0, -1)
			}
			fetched.Add(int64(len(ids)))
			if len(ids) > 0 {
				if err := c.Ack(ctx, ids...); err != nil {
					errs.Add(fmt.Sprintf("ack %d", statusOf(err)))
				}
			}
			if p.NextCursor == "" {
				break
			}
			cursor = p.NextCursor
		}
		if ck.OwedTo(r) <= 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
