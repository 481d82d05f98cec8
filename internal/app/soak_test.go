package app_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// soakSample is one reading of the process's resources.
type soakSample struct {
	at         time.Duration
	goroutines int
	fds        int // -1 where /proc/self/fd cannot be read
	heapInuse  uint64
}

func (s soakSample) String() string {
	return fmt.Sprintf("t=%v goroutines=%d fds=%d heap_inuse=%.1fMiB",
		s.at.Round(100*time.Millisecond), s.goroutines, s.fds, float64(s.heapInuse)/(1<<20))
}

func takeSoakSample(start time.Time) soakSample {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(ents)
	}
	return soakSample{at: time.Since(start), goroutines: runtime.NumGoroutine(), fds: fds, heapInuse: ms.HeapInuse}
}

// soakLedger records what was accepted and what arrived by message number
// (the payload), in slices sized before the run, so that the ledger itself
// does not grow the heap the test watches.
type soakLedger struct {
	mu         sync.Mutex
	accepted   []bool
	received   []uint32 // times each message arrived
	misrouted  int      // arrivals for another recipient, or with a bad payload
	sendErrors int
	firstErr   error
}

func newSoakLedger(n int) *soakLedger {
	return &soakLedger{accepted: make([]bool, n), received: make([]uint32, n)}
}

func (l *soakLedger) accept(seq int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.accepted[seq] = true
}

func (l *soakLedger) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sendErrors++
	if l.firstErr == nil {
		l.firstErr = err
	}
}

// receive records env's arrival for rcpt; rcptOf names the recipient of
// each message number.
func (l *soakLedger) receive(rcpt string, env client.Envelope, rcptOf func(int) string) {
	seq, err := strconv.Atoi(string(env.Payload))
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil || seq < 0 || seq >= len(l.received) || rcptOf(seq) != rcpt || env.Recipient != rcpt {
		l.misrouted++
		return
	}
	l.received[seq]++
}

// missing counts the accepted messages of the recipients that want picks
// that have not arrived.
func (l *soakLedger) missing(sent int, rcptOf func(int) string, want func(string) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for i := 0; i < sent; i++ {
		if l.accepted[i] && l.received[i] == 0 && want(rcptOf(i)) {
			n++
		}
	}
	return n
}

// soakDuration is ROUTING_SOAK_DURATION (a Go duration), 20 s by default.
func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("ROUTING_SOAK_DURATION")
	if v == "" {
		return 20 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 4*time.Second {
		t.Fatalf("ROUTING_SOAK_DURATION=%q: want a Go duration of at least 4s", v)
	}
	return d
}

// soakDuplicateWindow is ROUTING_SOAK_DUPLICATE_WINDOW (a Go duration), the
// bus.nats.duplicate_window of the run; zero (unset) keeps the default.
// JetStream's memory for the window levels off only after about three
// windows, so a short window shows within a soak of a few minutes what the
// default 2m shows after ten.
func soakDuplicateWindow(t *testing.T) time.Duration {
	v := os.Getenv("ROUTING_SOAK_DUPLICATE_WINDOW")
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("ROUTING_SOAK_DUPLICATE_WINDOW=%q: want a positive Go duration", v)
	}
	return d
}

// soakHeapProfiles is ROUTING_SOAK_HEAPPROFILE: a directory to write a heap
// profile to at every sample (heap-NN.prof, NN the sample's number: 00 at
// the start, the last at the end, 10 near the middle), or "" for none. Compare two with
// `go tool pprof -base heap-10.prof heap-20.prof -top -inuse_space`.
func soakHeapProfiles(t *testing.T) string {
	dir := os.Getenv("ROUTING_SOAK_HEAPPROFILE")
	if dir == "" {
		return ""
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("ROUTING_SOAK_HEAPPROFILE=%q: %v", dir, err)
	}
	return dir
}

// With ROUTING_SOAK_HEAPPROFILE set, the profiler samples an allocation
// every 4 KiB on average rather than 512 KiB, from the process's start, so
// that a difference of a few hundred KiB between two profiles shows.
func init() {
	if os.Getenv("ROUTING_SOAK_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 4 << 10
	}
}

// writeHeapProfile writes the heap profile of sample n into dir (nothing
// when dir is ""). The sample's runtime.GC makes it current.
func writeHeapProfile(t *testing.T, dir string, n int) {
	if dir == "" {
		return
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("heap-%02d.prof", n)))
	if err != nil {
		t.Errorf("heap profile: %v", err)
		return
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		t.Errorf("heap profile: %v", err)
	}
}

// TestSoakSteadyLoad sends 200 messages/s for ROUTING_SOAK_DURATION (20 s by
// default) to recipients connected over WebSocket, which ack each message,
// and to offline recipients, which fetch and ack theirs at the end. It checks
// that every accepted message arrives for its recipient, and that the
// process's goroutines, open file descriptors and heap in use in the second
// half of the run stay near the first half's.
func TestSoakSteadyLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("soak run skipped under -short")
	}
	const (
		rate         = 200 // messages per second
		workers      = 16
		onlineUsers  = 8
		offlineUsers = 4
		offlineEvery = 10 // every 10th message goes to an offline recipient
	)
	duration := soakDuration(t)
	profiles := soakHeapProfiles(t)
	window := soakDuplicateWindow(t)
	ta := startApp(t, func(c *config.Config) {
		if window > 0 {
			c.Bus.NATS.DuplicateWindow = window
		}
	})

	transport := &http.Transport{MaxIdleConnsPerHost: workers, MaxIdleConns: 2 * workers, IdleConnTimeout: time.Minute}
	t.Cleanup(transport.CloseIdleConnections)
	hc := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	sender := ta.client(t, "urn:sm:user:soak-sender")
	sender.HTTP = hc
	var online, offline []string
	for i := 0; i < onlineUsers; i++ {
		online = append(online, fmt.Sprintf("urn:sm:user:soak-online-%d", i))
	}
	for i := 0; i < offlineUsers; i++ {
		offline = append(offline, fmt.Sprintf("urn:sm:user:soak-offline-%d", i))
	}
	rcptOf := func(seq int) string {
		if seq%offlineEvery == offlineEvery-1 {
			return offline[(seq/offlineEvery)%offlineUsers]
		}
		return online[seq%onlineUsers]
	}
	isOnline := func(r string) bool { return slices.Contains(online, r) }
	// Room for every message the run can send, allocated before the first sample.
	capacity := int(duration.Seconds()*rate) + rate
	ledger := newSoakLedger(capacity)

	// Online recipients: one connection each, acking every message.
	readCtx, stopReading := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	var conns []*client.Conn
	for _, r := range online {
		c := ta.client(t, r)
		c.HTTP = hc
		conn, err := c.Connect(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		readers.Add(1)
		go func(rcpt string, conn *client.Conn) {
			defer readers.Done()
			for {
				env, err := conn.Next(readCtx)
				if err != nil {
					if readCtx.Err() == nil {
						t.Errorf("%s: read: %v", rcpt, err)
					}
					return
				}
				ledger.receive(rcpt, env, rcptOf)
				if err := conn.Ack(readCtx, env.ID); err != nil && readCtx.Err() == nil {
					t.Errorf("%s: ack: %v", rcpt, err)
					return
				}
			}
		}(r, conn)
	}
	defer func() {
		stopReading()
		for _, c := range conns {
			c.Close()
		}
		readers.Wait()
	}()
	connected(t, ta, onlineUsers)

	// Senders: a pool fed by a ticker at the steady rate.
	jobs := make(chan int, rate)
	var senders sync.WaitGroup
	for w := 0; w < workers; w++ {
		senders.Add(1)
		go func() {
			defer senders.Done()
			for i := range jobs {
				rcpt := rcptOf(i)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := sender.Send(ctx, client.Message{Recipient: rcpt, Payload: []byte(strconv.Itoa(i))})
				cancel()
				if err != nil {
					ledger.fail(fmt.Errorf("send %d to %s: %w", i, rcpt, err))
					continue
				}
				ledger.accept(i)
			}
		}()
	}

	start := time.Now()
	sampleEvery := duration / 20
	sendTick := time.NewTicker(time.Second / rate)
	sampleTick := time.NewTicker(sampleEvery)
	end := time.NewTimer(duration)
	samples := []soakSample{takeSoakSample(start)}
	writeHeapProfile(t, profiles, 0)
	sent, dropped := 0, 0
loop:
	for {
		select {
		case <-sendTick.C:
			// Catch up on ticks missed while sampling: the rate is kept
			// over the whole run, not per tick.
			for due := int(time.Since(start).Seconds() * rate); sent+dropped < due && sent < capacity; {
				select {
				case jobs <- sent:
					sent++
				default:
					dropped++ // the senders are a second behind: keep the rate, not a backlog
				}
			}
		case <-sampleTick.C:
			samples = append(samples, takeSoakSample(start))
			writeHeapProfile(t, profiles, len(samples)-1)
		case <-end.C:
			break loop
		}
	}
	sendTick.Stop()
	sampleTick.Stop()
	close(jobs)
	senders.Wait()
	elapsed := time.Since(start)
	samples = append(samples, takeSoakSample(start))
	writeHeapProfile(t, profiles, len(samples)-1)

	ledger.mu.Lock()
	sendErrors, firstErr := ledger.sendErrors, ledger.firstErr
	accepted := 0
	for _, ok := range ledger.accepted {
		if ok {
			accepted++
		}
	}
	ledger.mu.Unlock()
	t.Logf("sent %d in %v (%.0f/s), %d accepted, %d send errors, %d ticks dropped by busy senders",
		sent, elapsed.Round(time.Millisecond), float64(sent)/elapsed.Seconds(), accepted, sendErrors, dropped)
	if sendErrors > 0 {
		t.Errorf("%d sends failed with no fault injected; first: %v", sendErrors, firstErr)
	}
	if accepted < sent/2 {
		t.Fatalf("only %d of %d sends accepted", accepted, sent)
	}

	// Delivery: every accepted message reaches its online recipient live.
	deadline := time.Now().Add(2 * time.Minute)
	for ledger.missing(sent, rcptOf, isOnline) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d accepted messages never arrived on the recipients' connections", ledger.missing(sent, rcptOf, isOnline))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Offline recipients fetch and ack everything sent to them.
	for _, r := range offline {
		c := ta.client(t, r)
		c.HTTP = hc
		deadline := time.Now().Add(2 * time.Minute)
		isR := func(x string) bool { return x == r }
		for ledger.missing(sent, rcptOf, isR) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d accepted messages never became fetchable", r, ledger.missing(sent, rcptOf, isR))
			}
			p, err := c.Fetch(ctxT(t), "", envelope.MaxAckIDs)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Messages) == 0 {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			ids := make([]string, len(p.Messages))
			for i, env := range p.Messages {
				ids[i] = env.ID
				ledger.receive(r, env, rcptOf)
			}
			if err := c.Ack(ctxT(t), ids...); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Nothing is left pending: the online recipients' acks and the offline
	// ones' all took effect.
	for _, r := range append(append([]string(nil), online...), offline...) {
		c := ta.client(t, r)
		c.HTTP = hc
		eventually(t, r+" has nothing pending", func() bool {
			p, err := c.Fetch(ctxT(t), "", 10)
			return err == nil && len(p.Messages) == 0
		})
	}

	ledger.mu.Lock()
	dups, unknown, misrouted := 0, 0, ledger.misrouted
	for i, n := range ledger.received {
		if n > 0 && !ledger.accepted[i] {
			unknown++
		}
		if n > 1 {
			dups += int(n) - 1
		}
	}
	ledger.mu.Unlock()
	t.Logf("every accepted message arrived; %d duplicate deliveries", dups)
	if misrouted > 0 {
		t.Errorf("%d messages arrived for another recipient or with a payload that was not sent", misrouted)
	}
	if unknown > 0 && sendErrors == 0 {
		t.Errorf("%d messages arrived that no send was answered with", unknown)
	}

	// Resources: the second half's peak stays near the first half's.
	half := len(samples) / 2
	first, second := peak(samples[:half]), peak(samples[half:])
	t.Logf("start: %v", samples[0])
	t.Logf("end:   %v", samples[len(samples)-1])
	t.Logf("peak first half:  %v", first)
	t.Logf("peak second half: %v", second)
	if second.goroutines > first.goroutines+50 {
		t.Errorf("goroutines grew from %d to %d", first.goroutines, second.goroutines)
	}
	if first.fds >= 0 && second.fds > first.fds+50 {
		t.Errorf("open file descriptors grew from %d to %d", first.fds, second.fds)
	}
	if second.heapInuse > 2*first.heapInuse+8<<20 {
		t.Errorf("heap in use grew from %.1f MiB to %.1f MiB",
			float64(first.heapInuse)/(1<<20), float64(second.heapInuse)/(1<<20))
	}
	if testing.Verbose() {
		for _, s := range samples {
			t.Log(s)
		}
	}
}

// peak is the largest value of each resource over samples.
func peak(samples []soakSample) soakSample {
	p := soakSample{fds: -1}
	for _, s := range samples {
		p.at = s.at
		p.goroutines = max(p.goroutines, s.goroutines)
		p.fds = max(p.fds, s.fds)
		p.heapInuse = max(p.heapInuse, s.heapInuse)
	}
	return p
}
