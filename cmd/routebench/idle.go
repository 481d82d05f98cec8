package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// runIdle opens -conns WebSockets (one recipient each), holds them for
// -duration and reports the server's resident memory per connection:
// (RSS at the end of the hold − RSS before the first connection) /
// -total-conns. Then it sends one message each to -sample of the idle
// connections and checks that they arrive.
//
// Several processes (a process may hold about 20,000 descriptors here): give
// the RSS source (-pid or -metrics) to one of them only, started first with
// -total-conns set to the sum; start the others (without -pid/-metrics, with
// a longer -duration) once it has printed its baseline, so that they still
// hold their connections when it reads the RSS at the end of its hold.
func runIdle(ctx context.Context, e *env) (*summary, error) {
	o := e.o
	names, tokens, stoks, err := e.parties("i", o.conns)
	if err != nil {
		return nil, err
	}
	is := &idleStats{Conns: o.conns, TotalConns: o.totalConns}
	var rss func() (int64, error)
	switch {
	case e.t.pid != 0:
		pid := e.t.pid
		is.RSSSource = fmt.Sprintf("/proc/%d/status VmRSS", pid)
		rss = func() (int64, error) { return procRSS(pid) }
	case e.t.scrape != nil:
		is.RSSSource = "process_resident_memory_bytes in " + o.metrics
		rss = func() (int64, error) {
			text, err := e.t.scrape(ctx)
			if err != nil {
				return 0, err
			}
			v, ok := metricValue(text, "process_resident_memory_bytes", "")
			if !ok {
				return 0, fmt.Errorf("no process_resident_memory_bytes in %s", o.metrics)
			}
			return int64(v), nil
		}
	}
	if rss != nil {
		if is.RSSBefore, err = rss(); err != nil {
			return nil, fmt.Errorf("read the server's RSS: %w", err)
		}
		fmt.Fprintf(e.log, "server RSS before: %s (%s)\n", mib(is.RSSBefore), is.RSSSource)
	}
	runtime.GC()
	clientBefore, _ := procRSS(os.Getpid())

	ck := newChecker(o.conns, 1)
	rs := &receivers{ck: ck, wsErrs: &statusCounts{}}
	readCtx, stopRead := context.WithCancel(context.Background())
	defer stopRead()
	t0 := time.Now()
	serverRSS := func() string {
		if rss == nil {
			return "-"
		}
		v, err := rss()
		if err != nil {
			return err.Error()
		}
		return mib(v)
	}
	stopProgress := progress(e.log, t0, func() string {
		return fmt.Sprintf("open %d/%d  dropped %d  server RSS %s", rs.open.Load(), o.conns, rs.dropped.Load(), serverRSS())
	})
	defer stopProgress()
	if err := rs.openAll(ctx, e.wsc, e.t.ws, tokens, 1, 64, readCtx); err != nil {
		rs.closeAll(stopRead)
		return nil, err
	}
	is.ConnectSeconds = time.Since(t0).Seconds()
	fmt.Fprintf(e.log, "%d WebSockets open in %.2f s; holding for %v\n", o.conns, is.ConnectSeconds, o.duration)
	ackCtx, stopAck := context.WithCancel(readCtx)
	defer stopAck()
	go rs.ackLoop(ackCtx)
	select {
	case <-time.After(o.duration):
	case <-ctx.Done():
	}
	if rss != nil {
		if is.RSSAfter, err = rss(); err != nil {
			return nil, fmt.Errorf("read the server's RSS: %w", err)
		}
		is.RSSPerConn = float64(is.RSSAfter-is.RSSBefore) / float64(o.totalConns)
	}
	runtime.GC()
	if clientAfter, err := procRSS(os.Getpid()); err == nil {
		is.ClientRSSPerConn = float64(clientAfter-clientBefore) / float64(o.conns)
	}

	// Delivery still works: one message to each of a sample spread over the connections.
	sample := min(o.sample, o.conns)
	targets := make([]int, sample)
	for i := range targets {
		targets[i] = i * o.conns / sample
	}
	start := time.Now()
	l := &load{senders: e.clients(stoks), names: names, targets: targets,
		payload: o.payload, rate: o.rate, count: int64(sample), ck: ck}
	sendDur := l.run(ctx)
	drain(ctx, ck, o.drain)
	is.SampleSent = sample
	stopAck()
	rs.closeAll(stopRead)

	s := e.newSummary(1)
	s.Recipients, s.Connections = o.conns, o.conns
	s.Offered = l.offered.Load()
	s.fill(ck, &l.errs, rs.wsErrs, &l.sendLat, start, sendDur)
	s.Dropped = rs.dropped.Load()
	s.Idle = is
	return s, nil
}

// scrapeURL gets a Prometheus text page.
func scrapeURL(ctx context.Context, u string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", u, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return string(b), err
}

// metricValue sums the samples of metric name (without suffixes) in
// Prometheus text whose labels contain labels ("" for any).
func metricValue(text, name, labels string) (float64, bool) {
	var sum float64
	var found bool
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		lbl := ""
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			lbl, rest = rest[1:end], rest[end+1:]
		}
		if labels != "" && !strings.Contains(lbl, labels) {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum, found = sum+v, true
	}
	return sum, found
}

// pipelineHandled is the number of ingress messages the server's pipeline
// has handled successfully (stored and routed).
func pipelineHandled(ctx context.Context, scrape func(context.Context) (string, error)) (float64, error) {
	text, err := scrape(ctx)
	if err != nil {
		return 0, err
	}
	// No sample yet (or the metric is gone): 0; the wait for it is bounded.
	v, _ := metricValue(text, "routing_pipeline_messages_total", `result="ok"`)
	return v, nil
}
