package app_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

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

// soakLedger records what was accepted and what arrived, per recipient.
type soakLedger struct {
	mu         sync.Mutex
	accepted   map[string]map[string]bool // recipient -> id
	received   map[string]map[string]int  // recipient -> id -> times
	sendErrors int
	firstErr   error
}

func (l *soakLedger) accept(rcpt, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.accepted[rcpt][id] = true
}

func (l *soakLedger) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sendErrors++
	if l.firstErr == nil {
		l.firstErr = err
	}
}

func (l *soakLedger) receive(rcpt, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.received[rcpt][id]++
}

// missing counts accepted messages of rcpts that have not arrived.
func (l *soakLedger) missing(rcpts []string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range rcpts {
		for id := range l.accepted[r] {
			if l.received[r][id] == 0 {
				n++
			}
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
	ta := startApp(t, nil)

	transport := &http.Transport{MaxIdleConnsPerHost: workers, MaxIdleConns: 2 * workers, IdleConnTimeout: time.Minute}
	t.Cleanup(transport.CloseIdleConnections)
	hc := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	sender := ta.client(t, "urn:sm:user:soak-sender")
	sender.HTTP = hc
	ledger := &soakLedger{accepted: map[string]map[string]bool{}, received: map[string]map[string]int{}}
	var online, offline []string
	for i := 0; i < onlineUsers; i++ {
		online = append(online, fmt.Sprintf("urn:sm:user:soak-online-%d", i))
	}
	for i := 0; i < offlineUsers; i++ {
		offline = append(offline, fmt.Sprintf("urn:sm:user:soak-offline-%d", i))
	}
	for _, r := range append(append([]string(nil), online...), offline...) {
		ledger.accepted[r] = map[string]bool{}
		ledger.received[r] = map[string]int{}
	}

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
				ledger.receive(rcpt, env.ID)
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
				rcpt := online[i%onlineUsers]
				if i%offlineEvery == offlineEvery-1 {
					rcpt = offline[(i/offlineEvery)%offlineUsers]
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				acc, err := sender.Send(ctx, client.Message{Recipient: rcpt, Payload: []byte(fmt.Sprintf("soak %d", i))})
				cancel()
				if err != nil {
					ledger.fail(fmt.Errorf("send %d to %s: %w", i, rcpt, err))
					continue
				}
				ledger.accept(rcpt, acc.ID)
			}
		}()
	}

	start := time.Now()
	sampleEvery := duration / 20
	sendTick := time.NewTicker(time.Second / rate)
	sampleTick := time.NewTicker(sampleEvery)
	end := time.NewTimer(duration)
	samples := []soakSample{takeSoakSample(start)}
	sent, dropped := 0, 0
loop:
	for {
		select {
		case <-sendTick.C:
			// Catch up on ticks missed while sampling: the rate is kept
			// over the whole run, not per tick.
			for due := int(time.Since(start).Seconds() * rate); sent+dropped < due; {
				select {
				case jobs <- sent:
					sent++
				default:
					dropped++ // the senders are a second behind: keep the rate, not a backlog
				}
			}
		case <-sampleTick.C:
			samples = append(samples, takeSoakSample(start))
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

	ledger.mu.Lock()
	sendErrors, firstErr := ledger.sendErrors, ledger.firstErr
	accepted := 0
	for _, ids := range ledger.accepted {
		accepted += len(ids)
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
	for ledger.missing(online) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d accepted messages never arrived on the recipients' connections", ledger.missing(online))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Offline recipients fetch and ack everything sent to them.
	for _, r := range offline {
		c := ta.client(t, r)
		c.HTTP = hc
		deadline := time.Now().Add(2 * time.Minute)
		for ledger.missing([]string{r}) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d accepted messages never became fetchable", r, ledger.missing([]string{r}))
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
				ledger.receive(r, env.ID)
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
	dups, unknown := 0, 0
	for r, got := range ledger.received {
		for id, n := range got {
			if !ledger.accepted[r][id] {
				unknown++
			}
			dups += n - 1
		}
	}
	ledger.mu.Unlock()
	t.Logf("every accepted message arrived; %d duplicate deliveries", dups)
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
