package app_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	neturl "net/url"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// outcome of one send.
type outcome int

const (
	accepted outcome = iota + 1 // 202
	refused                     // 503: nothing was accepted
	failed                      // anything else (a transport error: unknown)
)

// checker sends a steady stream of numbered messages to one recipient and
// records every answer and every frame the recipient's live connection
// receives (acknowledging them).
type checker struct {
	t         *testing.T
	from      *client.Client
	recipient string
	// ephemeralEvery makes every nth message ephemeral (0: none).
	ephemeralEvery int

	mu       sync.Mutex
	sent     []outcome // by sequence number
	eph      []bool
	got      map[int]int // sequence -> frames received
	gotAfter map[int]bool
	sendErrs map[string]int

	stop    chan struct{}
	stopped chan struct{}
}

func newChecker(t *testing.T, from *client.Client, recipient string, ephemeralEvery int) *checker {
	return &checker{t: t, from: from, recipient: recipient, ephemeralEvery: ephemeralEvery,
		got: map[int]int{}, sendErrs: map[string]int{}}
}

// receive reads conn until it closes, acknowledging what it gets.
func (c *checker) receive(conn *client.Conn) {
	go func() {
		for {
			env, err := conn.Next(context.Background())
			var ef *client.ErrorFrame
			if errors.As(err, &ef) { // an ack refused during an outage: the message stays pending
				continue
			}
			if err != nil {
				return
			}
			n, err := strconv.Atoi(string(env.Payload))
			if err != nil {
				continue
			}
			c.mu.Lock()
			c.got[n]++
			c.mu.Unlock()
			if !env.Ephemeral {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = conn.Ack(ctx, env.ID)
				cancel()
			}
		}
	}()
}

// start sends one message every interval until stopSending.
func (c *checker) start(interval time.Duration) {
	c.stop, c.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(c.stopped)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-tick.C:
			}
			c.sendOne()
		}
	}()
}

func (c *checker) sendOne() {
	c.mu.Lock()
	n := len(c.sent)
	eph := c.ephemeralEvery > 0 && n%c.ephemeralEvery == 0
	c.sent = append(c.sent, 0)
	c.eph = append(c.eph, eph)
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := c.from.Send(ctx, client.Message{Recipient: c.recipient, Payload: []byte(strconv.Itoa(n)), Ephemeral: eph})
	cancel()
	o := accepted
	var ae *client.Error
	switch {
	case err == nil:
	case errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable:
		o = refused
	default:
		o = failed
	}
	c.mu.Lock()
	c.sent[n] = o
	if err != nil {
		c.sendErrs[err.Error()]++
	}
	c.mu.Unlock()
}

func (c *checker) stopSending() {
	close(c.stop)
	<-c.stopped
}

// count returns how many sends had outcome o (ephemeral or not, as asked;
// nil: both).
func (c *checker) count(o outcome, ephemeral *bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i, s := range c.sent {
		if s == o && (ephemeral == nil || c.eph[i] == *ephemeral) {
			n++
		}
	}
	return n
}

// received reports whether message n arrived.
func (c *checker) received(n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[n] > 0
}

// allStoredArrived reports whether every accepted stored message arrived.
func (c *checker) allStoredArrived() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.sent {
		if s == accepted && !c.eph[i] && c.got[i] == 0 {
			return false
		}
	}
	return true
}

// check fails the test for any refused message that was delivered, and
// reports the counts.
func (c *checker) check() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var acc, ref, unknown, refusedDelivered, missing int
	for i, s := range c.sent {
		switch s {
		case accepted:
			acc++
			if !c.eph[i] && c.got[i] == 0 {
				missing++
			}
		case refused:
			ref++
			if c.got[i] > 0 {
				refusedDelivered++
				c.t.Errorf("message %d (ephemeral %v) was answered 503 but delivered", i, c.eph[i])
			}
		default:
			unknown++
		}
	}
	if missing > 0 {
		var which []int
		for i, s := range c.sent {
			if s == accepted && !c.eph[i] && c.got[i] == 0 {
				which = append(which, i)
			}
		}
		c.t.Errorf("%d accepted stored messages never arrived: %v", missing, which)
	}
	c.t.Logf("sent %d: %d accepted, %d refused (%d of them delivered), %d failed otherwise %v",
		len(c.sent), acc, ref, refusedDelivered, unknown, c.sendErrs)
}

func ptr[T any](v T) *T { return &v }

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitForOr polls cond until it holds or d passes (the caller checks).
func waitForOr(d time.Duration, cond func() bool) {
	deadline := time.Now().Add(d)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

func deadLettered(ta *testApp) float64 {
	return testutil.ToFloat64(ta.app.Metrics().DeadLettered.WithLabelValues("ingress")) +
		testutil.ToFloat64(ta.app.Metrics().DeadLettered.WithLabelValues("delivery"))
}

// The bus goes away mid-stream (its server is killed) and comes back: no
// message answered 503 is ever delivered, every accepted stored message is
// delivered live, and nothing is dead-lettered.
func TestFaultBusDownRefusedNeverDelivered(t *testing.T) {
	ns := startNATS(t)
	ta := startApp(t, func(c *config.Config) {
		c.Bus.Type = "nats"
		c.Bus.NATS.URL = "nats://" + ns.Addr()
		c.Bus.NATS.SubjectPrefix = "fault"
		c.API.PublishTimeout = time.Second
		c.Pipeline.RerouteAfter = time.Second
	})
	bob := ta.client(t, "urn:sm:user:bob")
	conn, err := bob.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connected(t, ta, 1)
	ck := newChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 2)
	ck.receive(conn)
	ck.start(5 * time.Millisecond)

	waitFor(t, 10*time.Second, "ephemeral messages before the outage", func() bool { return ck.count(accepted, ptr(true)) >= 20 })
	ns.Kill()
	waitFor(t, 20*time.Second, "ephemeral messages refused", func() bool { return ck.count(refused, ptr(true)) >= 5 })
	ns.Start()
	before := ck.count(accepted, ptr(true))
	waitFor(t, 20*time.Second, "ephemeral messages accepted after the outage", func() bool { return ck.count(accepted, ptr(true)) >= before+20 })
	ck.stopSending()

	// What a reconnect would have sent from a buffer goes out first; the
	// last ephemeral message arriving means it would have arrived too.
	last := -1
	ck.mu.Lock()
	for i := len(ck.sent) - 1; i >= 0; i-- {
		if ck.eph[i] && ck.sent[i] == accepted {
			last = i
			break
		}
	}
	ck.mu.Unlock()
	waitFor(t, 20*time.Second, fmt.Sprintf("the last accepted ephemeral message (%d)", last), func() bool { return ck.received(last) })
	waitFor(t, 30*time.Second, "every accepted stored message", ck.allStoredArrived)
	ck.check()
	if n := deadLettered(ta); n != 0 {
		t.Errorf("%v messages dead-lettered by a bus outage", n)
	}
}

// lastAccepted is the sequence number of the last accepted message.
func (c *checker) lastAccepted() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.sent) - 1; i >= 0; i-- {
		if c.sent[i] == accepted {
			return i
		}
	}
	return -1
}

// Presence (Redis) goes down for longer than the retry budget and comes
// back empty, mid-stream, with the recipient connected: nothing is
// dead-lettered, every accepted message arrives live on the connection
// that stayed open, well before the next heartbeat (20 s) would have
// registered it again.
func TestFaultPresenceRestartedEmpty(t *testing.T) {
	rs := startRedis(t)
	ta := startApp(t, func(c *config.Config) {
		c.Presence.Type = "redis"
		c.Presence.Redis.Addr = rs.Addr()
		c.Presence.Heartbeat = 20 * time.Second
		c.Presence.TTL = 60 * time.Second
		c.Bus.MaxDeliveryAttempts = 3 // a budget of well under a second of retries
	})
	bob := ta.client(t, "urn:sm:user:bob")
	conn, err := bob.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connected(t, ta, 1)
	ck := newChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 0)
	ck.receive(conn)
	ck.start(10 * time.Millisecond)

	waitFor(t, 10*time.Second, "messages before the outage", func() bool { return ck.count(accepted, nil) >= 20 })
	rs.Kill()
	paused := func() float64 { return testutil.ToFloat64(ta.app.Metrics().ReceivePaused.WithLabelValues("ingress")) }
	waitFor(t, 20*time.Second, "the pipeline to pause for the outage", func() bool { return paused() == 1 })
	// The outage outlasts the retry budget many times over.
	outageEnds := time.Now().Add(2 * time.Second)
	for time.Now().Before(outageEnds) {
		time.Sleep(50 * time.Millisecond)
	}
	rs.Start() // empty: it keeps nothing on disk
	restarted := time.Now()
	before := ck.count(accepted, nil)
	waitFor(t, 10*time.Second, "messages accepted after the restart", func() bool { return ck.count(accepted, nil) >= before+50 })
	ck.stopSending()
	last := ck.lastAccepted()
	waitFor(t, 10*time.Second, "every accepted message, live", ck.allStoredArrived)
	if !ck.received(last) {
		t.Fatalf("last accepted message %d not received", last)
	}
	if d := time.Since(restarted); d >= 20*time.Second {
		t.Errorf("live delivery resumed %v after the restart, not before the next heartbeat", d)
	}
	ck.check()
	if n := deadLettered(ta); n != 0 {
		t.Errorf("%v messages dead-lettered by a presence outage", n)
	}
	// The gauge follows the receive gate, which opens just after the
	// held messages have been handled.
	waitForOr(5*time.Second, func() bool { return paused() == 0 })
	if v := paused(); v != 0 {
		t.Errorf("routing_receive_paused{queue=ingress} = %v after the outage, want 0", v)
	}
}

// Readiness follows the roles: with presence down, an api-only instance
// stays ready while one running the pipeline is not; both show presence
// down in routing_backend_up.
func TestFaultReadinessByRole(t *testing.T) {
	rs := startRedis(t)
	withRedis := func(roles ...string) func(*config.Config) {
		return func(c *config.Config) {
			c.Roles = roles
			c.Presence.Type = "redis"
			c.Presence.Redis.Addr = rs.Addr()
		}
	}
	apiOnly := startApp(t, withRedis("api"))
	all := startApp(t, withRedis("api", "pipeline", "realtime"))
	for _, ta := range []*testApp{apiOnly, all} {
		waitFor(t, 10*time.Second, "ready", func() bool { return get(t, ta.opsURL+"/readyz") == http.StatusOK })
	}
	rs.Kill()
	waitFor(t, 10*time.Second, "the full instance not ready", func() bool { return get(t, all.opsURL+"/readyz") == http.StatusServiceUnavailable })
	if code := get(t, apiOnly.opsURL+"/readyz"); code != http.StatusOK {
		t.Errorf("api-only instance /readyz = %d with presence down, want 200", code)
	}
	for _, ta := range []*testApp{apiOnly, all} {
		waitFor(t, 10*time.Second, "routing_backend_up{backend=presence} 0", func() bool {
			return testutil.ToFloat64(ta.app.Metrics().BackendUp.WithLabelValues("presence")) == 0
		})
		if v := testutil.ToFloat64(ta.app.Metrics().BackendUp.WithLabelValues("store")); v != 1 {
			t.Errorf("routing_backend_up{backend=store} = %v, want 1", v)
		}
	}
}

// The bus restarts four times in a row: live delivery resumes within a few
// seconds after each, not after a resubscribe backoff that grew with every
// earlier restart.
func TestFaultBusRestartsResumeEachTime(t *testing.T) {
	ns := startNATS(t)
	ta := startApp(t, func(c *config.Config) {
		c.Bus.Type = "nats"
		c.Bus.NATS.URL = "nats://" + ns.Addr()
		c.Bus.NATS.SubjectPrefix = "restarts"
		c.Bus.MinBackoff = time.Second
		c.Bus.MaxBackoff = time.Minute
	})
	bob := ta.client(t, "urn:sm:user:bob")
	conn, err := bob.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connected(t, ta, 1)
	ck := newChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 1) // ephemeral: live only
	ck.receive(conn)
	liveAgain := func() bool {
		ck.sendOne()
		last := ck.lastAccepted()
		return last >= 0 && ck.received(last)
	}
	// The consumers are subscribed before the first restart.
	waitFor(t, 15*time.Second, "live delivery before the restarts", liveAgain)
	for round := range 4 {
		ns.Kill()
		ns.Start()
		back := time.Now()
		// Send until one arrives live.
		waitFor(t, 15*time.Second, fmt.Sprintf("live delivery after restart %d", round+1), liveAgain)
		t.Logf("restart %d: live delivery resumed after %v", round+1, time.Since(back).Round(10*time.Millisecond))
		if d := time.Since(back); d > 6*time.Second {
			t.Errorf("restart %d: live delivery resumed only after %v", round+1, d)
		}
	}
}

// The store (PostgreSQL, behind a proxy that is cut) goes away mid-stream
// for longer than the retry budget: sends are refused with 503 meanwhile,
// accepted again once it is back, every accepted message arrives live,
// and nothing is dead-lettered.
func TestFaultStoreCut(t *testing.T) {
	pgURL := os.Getenv("ROUTING_TEST_POSTGRES_URL")
	if pgURL == "" {
		t.Skip("ROUTING_TEST_POSTGRES_URL is not set")
	}
	u, err := neturl.Parse(pgURL)
	if err != nil {
		t.Fatal(err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "faults_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pgURL)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	px := startProxy(t, u.Host)
	u.Host = px.Addr()
	ta := startApp(t, func(c *config.Config) {
		c.Store.Type = "postgres"
		c.DatabaseURL = u.String()
		c.Store.PostgresSchema = schema
		c.API.PublishTimeout = time.Second
	})
	bob := ta.client(t, "urn:sm:user:bob")
	conn, err := bob.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connected(t, ta, 1)
	ck := newChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 0)
	ck.receive(conn)
	ck.start(10 * time.Millisecond)

	waitFor(t, 10*time.Second, "messages before the outage", func() bool { return ck.count(accepted, nil) >= 20 })
	px.Cut()
	waitFor(t, 20*time.Second, "sends refused", func() bool { return ck.count(refused, nil) >= 5 })
	outageEnds := time.Now().Add(2 * time.Second) // past the retry budget
	for time.Now().Before(outageEnds) {
		time.Sleep(50 * time.Millisecond)
	}
	px.Restore()
	before := ck.count(accepted, nil)
	waitFor(t, 20*time.Second, "messages accepted after the outage", func() bool { return ck.count(accepted, nil) >= before+20 })
	ck.stopSending()
	waitForOr(20*time.Second, ck.allStoredArrived)
	ck.check()
	if n := deadLettered(ta); n != 0 {
		t.Errorf("%v messages dead-lettered by a store outage", n)
	}
}
