package app_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	neturl "net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/faulttest"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// deadLettered is how many messages ta moved to a dead-letter queue.
func deadLettered(ta *testApp) float64 {
	return testutil.ToFloat64(ta.app.Metrics().DeadLettered.WithLabelValues("ingress")) +
		testutil.ToFloat64(ta.app.Metrics().DeadLettered.WithLabelValues("delivery"))
}

// The bus goes away mid-stream (its server is killed) and comes back. An
// instance with every role keeps delivering to its own connections in
// process while the bus is down: ephemeral messages are still accepted and
// arrive live. No message answered 503 is ever delivered, every accepted
// stored message is delivered, and nothing is dead-lettered.
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
	conn := connect(t, bob)
	connected(t, ta, 1)
	ck := faulttest.NewChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 2)
	ck.Receive(conn)
	ck.Start(5 * time.Millisecond)

	faulttest.WaitFor(t, 10*time.Second, "ephemeral messages before the outage", func() bool { return ck.Count(faulttest.Accepted, faulttest.Ptr(true)) >= 20 })
	ns.Kill()
	during := ck.Count(faulttest.Accepted, faulttest.Ptr(true))
	faulttest.WaitFor(t, 20*time.Second, "ephemeral messages accepted while the bus is down", func() bool { return ck.Count(faulttest.Accepted, faulttest.Ptr(true)) >= during+20 })
	inOutage := ck.LastAccepted(faulttest.Ptr(true))
	faulttest.WaitFor(t, 20*time.Second, fmt.Sprintf("an ephemeral message accepted while the bus is down (%d) delivered", inOutage), func() bool { return ck.Received(inOutage) })
	ns.Start()
	before := ck.Count(faulttest.Accepted, faulttest.Ptr(true))
	faulttest.WaitFor(t, 20*time.Second, "ephemeral messages accepted after the outage", func() bool { return ck.Count(faulttest.Accepted, faulttest.Ptr(true)) >= before+20 })
	ck.StopSending()

	// What a reconnect would have sent from a buffer goes out first; the
	// last ephemeral message arriving means it would have arrived too.
	last := ck.LastAccepted(faulttest.Ptr(true))
	faulttest.WaitFor(t, 20*time.Second, fmt.Sprintf("the last accepted ephemeral message (%d)", last), func() bool { return ck.Received(last) })
	faulttest.WaitFor(t, 30*time.Second, "every accepted stored message", ck.AllStoredArrived)
	ck.Check()
	if n := deadLettered(ta); n != 0 {
		t.Errorf("%v messages dead-lettered by a bus outage", n)
	}
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
	conn := connect(t, bob)
	connected(t, ta, 1)
	ck := faulttest.NewChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 0)
	ck.Receive(conn)
	ck.Start(10 * time.Millisecond)

	faulttest.WaitFor(t, 10*time.Second, "messages before the outage", func() bool { return ck.Count(faulttest.Accepted, nil) >= 20 })
	rs.Kill()
	paused := func() float64 { return testutil.ToFloat64(ta.app.Metrics().ReceivePaused.WithLabelValues("ingress")) }
	faulttest.WaitFor(t, 20*time.Second, "the pipeline to pause for the outage", func() bool { return paused() == 1 })
	// The outage outlasts the retry budget many times over.
	outageEnds := time.Now().Add(2 * time.Second)
	for time.Now().Before(outageEnds) {
		time.Sleep(50 * time.Millisecond)
	}
	rs.Start() // empty: it keeps nothing on disk
	restarted := time.Now()
	before := ck.Count(faulttest.Accepted, nil)
	faulttest.WaitFor(t, 10*time.Second, "messages accepted after the restart", func() bool { return ck.Count(faulttest.Accepted, nil) >= before+50 })
	ck.StopSending()
	last := ck.LastAccepted(nil)
	faulttest.WaitFor(t, 10*time.Second, "every accepted message, live", ck.AllStoredArrived)
	if !ck.Received(last) {
		t.Fatalf("last accepted message %d not received", last)
	}
	if d := time.Since(restarted); d >= 20*time.Second {
		t.Errorf("live delivery resumed %v after the restart, not before the next heartbeat", d)
	}
	ck.Check()
	if n := deadLettered(ta); n != 0 {
		t.Errorf("%v messages dead-lettered by a presence outage", n)
	}
	// The gauge follows the receive gate, which opens just after the
	// held messages have been handled.
	faulttest.WaitForOr(5*time.Second, func() bool { return paused() == 0 })
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
		faulttest.WaitFor(t, 10*time.Second, "ready", func() bool { return get(t, ta.opsURL+"/readyz") == http.StatusOK })
	}
	rs.Kill()
	faulttest.WaitFor(t, 10*time.Second, "the full instance not ready", func() bool { return get(t, all.opsURL+"/readyz") == http.StatusServiceUnavailable })
	if code := get(t, apiOnly.opsURL+"/readyz"); code != http.StatusOK {
		t.Errorf("api-only instance /readyz = %d with presence down, want 200", code)
	}
	for _, ta := range []*testApp{apiOnly, all} {
		faulttest.WaitFor(t, 10*time.Second, "routing_backend_up{backend=presence} 0", func() bool {
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
	conn := connect(t, bob)
	connected(t, ta, 1)
	ck := faulttest.NewChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 1) // ephemeral: live only
	ck.Receive(conn)
	liveAgain := func() bool {
		ck.SendOne()
		last := ck.LastAccepted(nil)
		return last >= 0 && ck.Received(last)
	}
	// The consumers are subscribed before the first restart.
	faulttest.WaitFor(t, 15*time.Second, "live delivery before the restarts", liveAgain)
	for round := range 4 {
		ns.Kill()
		ns.Start()
		back := time.Now()
		// Send until one arrives live.
		faulttest.WaitFor(t, 15*time.Second, fmt.Sprintf("live delivery after restart %d", round+1), liveAgain)
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
		c.Store.Postgres.Schema = schema
		c.API.PublishTimeout = time.Second
	})
	bob := ta.client(t, "urn:sm:user:bob")
	conn := connect(t, bob)
	connected(t, ta, 1)
	ck := faulttest.NewChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 0)
	ck.Receive(conn)
	ck.Start(10 * time.Millisecond)

	faulttest.WaitFor(t, 10*time.Second, "messages before the outage", func() bool { return ck.Count(faulttest.Accepted, nil) >= 20 })
	px.Cut()
	faulttest.WaitFor(t, 20*time.Second, "sends refused", func() bool { return ck.Count(faulttest.Refused, nil) >= 5 })
	outageEnds := time.Now().Add(2 * time.Second) // past the retry budget
	for time.Now().Before(outageEnds) {
		time.Sleep(50 * time.Millisecond)
	}
	px.Restore()
	before := ck.Count(faulttest.Accepted, nil)
	faulttest.WaitFor(t, 20*time.Second, "messages accepted after the outage", func() bool { return ck.Count(faulttest.Accepted, nil) >= before+20 })
	ck.StopSending()
	faulttest.WaitForOr(20*time.Second, ck.AllStoredArrived)
	ck.Check()
	if n := deadLettered(ta); n != 0 {
		t.Errorf("%v messages dead-lettered by a store outage", n)
	}
}

// A recipient that stops reading while messages stream to it is cut off
// as a slow consumer; another recipient's live stream goes on untouched;
// on reconnect the slow one gets every message accepted meanwhile (from
// the store, then live), and nothing is dead-lettered.
func TestFaultSlowConsumer(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.Realtime.SendQueue = 16 })
	alice := ta.client(t, "urn:sm:user:alice")
	carol := ta.client(t, "urn:sm:user:carol")
	cconn := connect(t, carol)
	bob := ta.client(t, "urn:sm:user:bob")
	connect(t, bob) // a connection that is never read
	connected(t, ta, 2)

	ckC := faulttest.NewChecker(t, alice, "urn:sm:user:carol", 0)
	carolEnded := ckC.Receive(cconn)
	ckC.Start(10 * time.Millisecond)
	ckB := faulttest.NewChecker(t, alice, "urn:sm:user:bob", 0)
	ckB.Start(10 * time.Millisecond)

	// Large messages fill bob's socket, then his queue.
	dropped := func() float64 { return testutil.ToFloat64(ta.app.Metrics().WSDropped.WithLabelValues("slow_consumer")) }
	fill := make([]byte, 60<<10)
	for i := 0; i < 1000 && dropped() == 0; i++ {
		if _, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob", Payload: fill}); err != nil {
			t.Fatal(err)
		}
	}
	faulttest.WaitFor(t, 10*time.Second, "bob cut off as a slow consumer", func() bool { return dropped() == 1 })
	connected(t, ta, 1)

	before := ckB.Count(faulttest.Accepted, nil)
	bconn := connect(t, bob)
	ckB.Receive(bconn)
	faulttest.WaitFor(t, 10*time.Second, "messages to bob after the reconnect", func() bool { return ckB.Count(faulttest.Accepted, nil) >= before+20 })
	ckB.StopSending()
	ckC.StopSending()
	faulttest.WaitFor(t, 30*time.Second, "every message accepted for bob", ckB.AllStoredArrived)
	faulttest.WaitFor(t, 10*time.Second, "every message accepted for carol", ckC.AllStoredArrived)
	ckB.Check()
	ckC.Check()
	select {
	case err := <-carolEnded:
		t.Fatalf("carol's connection ended: %v", err)
	default:
	}
	if n := dropped(); n != 1 {
		t.Errorf("%v slow consumers cut off, want 1 (bob)", n)
	}
	if n := deadLettered(ta); n != 0 {
		t.Errorf("%v messages dead-lettered", n)
	}
}
