package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// percentile returns the nearest-rank p-th quantile (0 < p <= 1) of sorted.
func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// latencyStats summarises latencies in milliseconds.
type latencyStats struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func newLatencyStats(sorted []int64) *latencyStats {
	if len(sorted) == 0 {
		return nil
	}
	ms := func(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }
	return &latencyStats{
		N:   len(sorted),
		P50: ms(percentile(sorted, .50)),
		P90: ms(percentile(sorted, .90)),
		P99: ms(percentile(sorted, .99)),
		Max: ms(sorted[len(sorted)-1]),
	}
}

func (l *latencyStats) String() string {
	if l == nil {
		return "-"
	}
	return fmt.Sprintf("p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms  (n=%d)", l.P50, l.P90, l.P99, l.Max, l.N)
}

// latencies collects samples from many goroutines.
type latencies struct {
	mu sync.Mutex
	ns []int64
}

func (l *latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.ns = append(l.ns, int64(d))
	l.mu.Unlock()
}

func (l *latencies) Sorted() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.ns)
	slices.Sort(out)
	return out
}

// summary is what a run reports; -json prints it as is.
type summary struct {
	Scenario          string  `json:"scenario"`
	API               string  `json:"api"`
	WS                string  `json:"ws"`
	Embedded          bool    `json:"embedded"`
	Recipients        int     `json:"recipients"`
	ConnsPerRecipient int     `json:"conns_per_recipient,omitempty"`
	Connections       int     `json:"connections"`
	Senders           int     `json:"senders"`
	PayloadBytes      int     `json:"payload_bytes"`
	Rate              float64 `json:"rate"` // offered msg/s, 0: as fast as possible
	Ephemeral         bool    `json:"ephemeral,omitempty"`
	FDLimit           uint64  `json:"fd_limit"`

	Offered       int64            `json:"offered"`
	Accepted      int64            `json:"accepted"`
	SendSeconds   float64          `json:"send_seconds"`
	AcceptedPerS  float64          `json:"accepted_per_s"`
	Deliveries    int64            `json:"deliveries"`
	DeliveredPerS float64          `json:"delivered_per_s"`
	Latency       *latencyStats    `json:"latency"`      // send start to WebSocket receipt
	SendLatency   *latencyStats    `json:"send_latency"` // send start to 202
	Missing       int64            `json:"missing"`
	MissingDeliv  int64            `json:"missing_deliveries"`
	MissingIDs    []string         `json:"missing_ids,omitempty"`
	Duplicates    int64            `json:"duplicates"`
	Unexpected    int64            `json:"unexpected"`
	Misrouted     int64            `json:"misrouted"`
	ReusedIDs     int64            `json:"reused_ids"`
	Errors        map[string]int64 `json:"errors"` // failed requests by status; "transport": no answer
	WSErrors      map[string]int64 `json:"ws_errors,omitempty"`
	Dropped       int64            `json:"dropped_connections"` // closed by the server or failed during the run
	ClientCPU     float64          `json:"client_cpu_seconds"`  // this process (includes the server with -embedded)
	// Server processes named by -pids: their CPU (user + system) during
	// the run, and per delivered message.
	ServerPIDs      []int   `json:"server_pids,omitempty"`
	ServerCPU       float64 `json:"server_cpu_seconds,omitempty"`
	ServerCPUPerMsg float64 `json:"server_cpu_us_per_msg,omitempty"`
	ServerCPUError  string  `json:"server_cpu_error,omitempty"`
	// ServerProcesses is each process's share, in the order of -pids.
	ServerProcesses []processCPU `json:"server_processes,omitempty"`
	// Deliveries per -window, and the last window's rate over the first's.
	Windows   []windowStat `json:"windows,omitempty"`
	HoldRatio float64      `json:"hold_ratio,omitempty"`

	Offline *offlineStats `json:"offline,omitempty"`
	Idle    *idleStats    `json:"idle,omitempty"`
	Floor   *floorStats   `json:"floor,omitempty"`
}

type offlineStats struct {
	StoredSeconds float64 `json:"stored_seconds,omitempty"` // send start until the pipeline handled every accepted message
	StoredPerS    float64 `json:"stored_per_s,omitempty"`
	StoredSource  string  `json:"stored_source"`
	FetchSeconds  float64 `json:"fetch_ack_seconds"` // the whole backlog, every recipient, fetched and acked
	Pages         int64   `json:"pages"`
	Fetched       int64   `json:"fetched"`
}

type idleStats struct {
	Conns            int     `json:"conns"`       // held by this process
	TotalConns       int     `json:"total_conns"` // held by all processes (divisor)
	ConnectSeconds   float64 `json:"connect_seconds"`
	RSSSource        string  `json:"rss_source"`
	RSSBefore        int64   `json:"rss_before_bytes"`
	RSSAfter         int64   `json:"rss_after_bytes"`
	RSSPerConn       float64 `json:"rss_per_conn_bytes"`
	ClientRSSPerConn float64 `json:"client_rss_per_conn_bytes"`
	SampleSent       int     `json:"sample_sent"`
}

func (s *summary) fill(ck *checker, errs, wsErrs *statusCounts, sendLat *latencies, start time.Time, sendDur time.Duration) {
	r := ck.Result()
	s.Accepted = ck.accepted.Load()
	s.SendSeconds = sendDur.Seconds()
	if sendDur > 0 {
		s.AcceptedPerS = float64(s.Accepted) / sendDur.Seconds()
	}
	s.Deliveries = ck.matched.Load()
	if last := ck.lastRecv.Load(); last > start.UnixNano() && s.Deliveries > 0 {
		s.DeliveredPerS = float64(s.Deliveries) / time.Duration(last-start.UnixNano()).Seconds()
	}
	s.Latency = newLatencyStats(r.Latencies)
	s.SendLatency = newLatencyStats(sendLat.Sorted())
	s.Missing, s.MissingDeliv, s.MissingIDs = r.Missing, r.MissingDeliveries, r.MissingIDs
	s.Duplicates, s.Unexpected = ck.duplicates.Load(), r.Unexpected
	s.Misrouted, s.ReusedIDs = ck.misrouted.Load(), ck.reusedIDs.Load()
	s.Errors, s.WSErrors = errs.Snapshot(), wsErrs.Snapshot()
	s.ClientCPU = cpuSeconds()
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func (s *summary) writeJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(s)
}

func (s *summary) writeText(w io.Writer) {
	row := func(k, f string, a ...any) { fmt.Fprintf(w, "  %-20s %s\n", k, fmt.Sprintf(f, a...)) }
	rate := "as fast as possible"
	if s.Rate > 0 {
		rate = fmt.Sprintf("%.0f msg/s", s.Rate)
	}
	fmt.Fprintf(w, "\n%s: api %s, ws %s", s.Scenario, s.API, s.WS)
	if s.Embedded {
		fmt.Fprint(w, " (embedded)")
	}
	fmt.Fprintln(w)
	who := fmt.Sprintf("%d recipients × %d connections", s.Recipients, s.ConnsPerRecipient)
	switch {
	case s.Offline != nil:
		who = fmt.Sprintf("%d recipients, not connected", s.Recipients)
	case s.Idle != nil:
		who = fmt.Sprintf("%d connections, one recipient each", s.Connections)
	case s.Floor != nil:
		who = "no service: group-committed appends to a file"
	}
	kind := ""
	if s.Ephemeral {
		kind = ", ephemeral"
	}
	row("setup", "%s, %d senders, %d B payload%s, %s, fd limit %d", who, s.Senders, s.PayloadBytes, kind, rate, s.FDLimit)
	row("offered", "%d", s.Offered)
	row("accepted (202)", "%d in %.2f s = %.0f/s", s.Accepted, s.SendSeconds, s.AcceptedPerS)
	if s.Offline == nil && s.Floor == nil {
		row("delivered", "%d = %.0f/s", s.Deliveries, s.DeliveredPerS)
		row("latency (receipt)", "%s", s.Latency)
	}
	row("latency (202)", "%s", s.SendLatency)
	if o := s.Offline; o != nil {
		if o.StoredSeconds > 0 {
			row("stored", "all accepted handled by the pipeline %.2f s after the first send = %.0f/s (%s)", o.StoredSeconds, o.StoredPerS, o.StoredSource)
		} else {
			row("stored", "not measured (%s)", o.StoredSource)
		}
		row("fetch+ack", "%d messages in %d pages: %.3f s", o.Fetched, o.Pages, o.FetchSeconds)
	}
	if f := s.Floor; f != nil {
		row("commits", "%d, %.1f requests each, fsync %v", f.Commits, f.ItemsPerCommit, f.Fsync)
	}
	if i := s.Idle; i != nil {
		row("connect", "%d connections in %.2f s", i.Conns, i.ConnectSeconds)
		if i.RSSSource != "" {
			row("server RSS", "%s before, %s with %d held: %.1f KB per connection (%s)",
				mib(i.RSSBefore), mib(i.RSSAfter), i.TotalConns, i.RSSPerConn/1e3, i.RSSSource)
		} else {
			row("server RSS", "not measured (give -pid or -metrics)")
		}
		row("client RSS", "%.1f KB per connection (this process)", i.ClientRSSPerConn/1e3)
		row("delivery check", "%d messages to %d of the idle connections", i.SampleSent, i.SampleSent)
	}
	row("missing", "%d messages (%d deliveries) %s", s.Missing, s.MissingDeliv, strings.Join(s.MissingIDs, " "))
	row("duplicates", "%d", s.Duplicates)
	if s.Unexpected+s.Misrouted+s.ReusedIDs > 0 {
		row("anomalies", "unexpected %d (received, never answered 202), misrouted %d, reused ids %d", s.Unexpected, s.Misrouted, s.ReusedIDs)
	}
	row("errors by status", "%s", countsString(s.Errors))
	if len(s.WSErrors) > 0 || s.Dropped > 0 {
		row("ws errors", "%s, dropped connections %d", countsString(s.WSErrors), s.Dropped)
	}
	if len(s.Windows) > 0 {
		var parts []string
		for _, w := range s.Windows {
			parts = append(parts, fmt.Sprintf("%.0f", w.DeliveredPerS))
		}
		row("per window", "%s delivered/s (%.0f s each); last/first %.2f", strings.Join(parts, " "), s.Windows[0].Seconds, s.HoldRatio)
	}
	if len(s.ServerPIDs) > 0 {
		row("server CPU", "%.2f s in %d processes = %.1f µs per delivered message%s", s.ServerCPU, len(s.ServerPIDs), s.ServerCPUPerMsg,
			map[bool]string{true: " (" + s.ServerCPUError + ")", false: ""}[s.ServerCPUError != ""])
		if len(s.ServerProcesses) > 1 {
			var parts []string
			for _, p := range s.ServerProcesses {
				name := p.Label
				if name == "" {
					name = strconv.Itoa(p.PID)
				}
				parts = append(parts, fmt.Sprintf("%s %.1f µs", name, p.CPUPerMsg))
			}
			row("per process", "%s", strings.Join(parts, ", "))
		}
	}
	row("client CPU", "%.1f s (this process%s)", s.ClientCPU, map[bool]string{true: ", server included", false: ""}[s.Floor != nil])
}

func countsString(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// progress prints line() every second until stop is called.
func progress(w io.Writer, start time.Time, line func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(w, "%6.1fs  %s\n", time.Since(start).Seconds(), line())
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// rater turns a counter into a per-second rate between calls.
type rater struct {
	last  int64
	lastT time.Time
}

func (r *rater) rate(n int64) float64 {
	now := time.Now()
	var v float64
	if !r.lastT.IsZero() {
		v = float64(n-r.last) / now.Sub(r.lastT).Seconds()
	}
	r.last, r.lastT = n, now
	return v
}
