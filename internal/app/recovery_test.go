package app_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/faulttest"
	"github.com/go-routing-service/routingservice/internal/store/postgres"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// The recovery tests route through the bus (no in-process hand-off to the
// recipient's instance) with pipeline.reroute_after far beyond the test:
// only the bus, the held events and the sweep run on the bus's recovery
// can deliver what was accepted while it was down.
const recoveryRerouteAfter = 10 * time.Minute

// pgSchema returns the shared PostgreSQL URL and a new schema in it,
// dropped when the test ends; it skips without a database.
func pgSchema(t *testing.T) (url, schema string) {
	t.Helper()
	url = os.Getenv("ROUTING_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("ROUTING_TEST_POSTGRES_URL is not set")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema = "recovery_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return url, schema
}

// sharedBackends configures an instance on the shared store (pgURL,
// schema), a private Redis (presence) and NATS at natsURL.
func sharedBackends(id string, roles []string, pgURL, schema, redisAddr, natsURL string, replicas int) func(*config.Config) {
	return func(c *config.Config) {
		c.InstanceID = id
		c.Roles = roles
		c.Store.Type = "postgres"
		c.Store.Postgres.Schema = schema
		c.DatabaseURL = pgURL
		c.Presence.Type = "redis"
		c.Presence.Redis.Addr = redisAddr
		c.Bus.Type = "nats"
		c.Bus.NATS.URL = natsURL
		c.Bus.NATS.SubjectPrefix = "recovery"
		c.Bus.NATS.Replicas = replicas
		c.API.PublishTimeout = time.Second
		c.Pipeline.RerouteAfter = recoveryRerouteAfter
	}
}

// senderAndRealtime starts an instance for the api role (with the
// pipeline role too when pipelineApart is false, else a pipeline instance
// apart) and a realtime instance on the shared backends, connects bob to
// the realtime one and returns every instance and a checker sending from
// alice through the api instance, receiving on bob's connection, once a
// first message arrived live.
func senderAndRealtime(t *testing.T, natsURL string, pipelineApart bool) (apps []*testApp, ck *faulttest.Checker) {
	t.Helper()
	return startSenderAndRealtime(t, natsURL, pipelineApart, 1)
}

// senderAndRealtimeOn is senderAndRealtime (the pipeline on the api
// instance) on a NATS cluster, with streams of that many replicas.
func senderAndRealtimeOn(t *testing.T, natsURL string, replicas int) (apps []*testApp, ck *faulttest.Checker) {
	t.Helper()
	return startSenderAndRealtime(t, natsURL, false, replicas)
}

func startSenderAndRealtime(t *testing.T, natsURL string, pipelineApart bool, replicas int) (apps []*testApp, ck *faulttest.Checker) {
	t.Helper()
	pgURL, schema := pgSchema(t)
	rs := startRedis(t)
	roles := []string{config.RoleAPI, config.RolePipeline}
	if pipelineApart {
		roles = roles[:1]
		apps = append(apps, startApp(t, sharedBackends("rec-pipeline", []string{config.RolePipeline}, pgURL, schema, rs.Addr(), natsURL, replicas)))
	}
	sender := startApp(t, sharedBackends("rec-sender", roles, pgURL, schema, rs.Addr(), natsURL, replicas))
	rt := startApp(t, sharedBackends("rec-realtime", []string{config.RoleRealtime}, pgURL, schema, rs.Addr(), natsURL, replicas))
	apps = append(apps, sender, rt)
	conn := connect(t, rt.client(t, "urn:sm:user:bob"))
	connected(t, rt, 1)
	ck = faulttest.NewChecker(t, sender.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 0)
	ck.Receive(conn)
	faulttest.WaitFor(t, 30*time.Second, "a first message live through the bus", func() bool {
		ck.SendOne() // each given a second to arrive
		n := ck.LastAccepted(nil)
		return n >= 0 && happensWithin(time.Second, func() bool { return ck.Received(n) })
	})
	return apps, ck
}

// liveAfter waits until every message in [from, to) that was accepted
// has arrived and returns how long after since the last one did (polled
// every 5 ms), failing the test after limit.
func liveAfter(t *testing.T, ck *faulttest.Checker, from, to int, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	all := func() bool {
		for n := from; n < to; n++ {
			if ck.Outcome(n) == faulttest.Accepted && !ck.Received(n) {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(limit)
	for !all() {
		if time.Now().After(deadline) {
			var missing []int
			for n := from; n < to; n++ {
				if ck.Outcome(n) == faulttest.Accepted && !ck.Received(n) {
					missing = append(missing, n)
				}
			}
			t.Fatalf("messages accepted during the fault not delivered %v after recovery: %v", limit, missing)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(since)
}

// happensWithin polls cond every 10 ms for d and reports whether it held
// once.
func happensWithin(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}

// accepted counts the messages in [from, to) that were accepted.
func accepted(ck *faulttest.Checker, from, to int) int {
	n := 0
	for i := from; i < to; i++ {
		if ck.Outcome(i) == faulttest.Accepted {
			n++
		}
	}
	return n
}

// The bus (a private nats-server) is killed under a steady stream and
// restarted, the recipient connected to a realtime instance other than
// the one that accepts: messages accepted while the bus was down (stored,
// 202) arrive live within 2 s of the server accepting connections again,
// not after pipeline.reroute_after. Nothing is lost or dead-lettered.
// With the pipeline on the accepting instance, its hand-off holds them
// and tries them again; with the pipeline apart, they were never
// published, and the sweep run on the bus's recovery routes them.
func TestRecoveryBusRestartDeliversHeldMessagesLive(t *testing.T) {
	for _, apart := range []bool{false, true} {
		name := "api+pipeline,realtime"
		if apart {
			name = "api,pipeline,realtime"
		}
		t.Run(name, func(t *testing.T) { testBusRestartLive(t, apart) })
	}
}

func testBusRestartLive(t *testing.T, pipelineApart bool) {
	ns := startNATS(t)
	apps, ck := senderAndRealtime(t, "nats://"+ns.Addr(), pipelineApart)
	ck.Start(20 * time.Millisecond)
	faulttest.WaitFor(t, 10*time.Second, "messages before the outage", func() bool { return ck.Count(faulttest.Accepted, nil) >= 20 })

	ns.Kill()
	from := ck.Sent()
	faulttest.WaitFor(t, 20*time.Second, "messages accepted while the bus is down", func() bool {
		return accepted(ck, from, ck.Sent()) >= 50
	})
	ns.Start()
	back := time.Now()
	to := ck.Sent()
	took := liveAfter(t, ck, from, to, back, 20*time.Second)
	t.Logf("%d messages accepted while the bus was down arrived %v after it came back", accepted(ck, from, to), took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("messages accepted while the bus was down arrived %v after it came back, want within 2s", took)
	}
	ck.StopSending()
	faulttest.WaitFor(t, 20*time.Second, "every accepted message", ck.AllStoredArrived)
	ck.Check()
	for _, ta := range apps {
		if n := deadLettered(ta); n != 0 {
			t.Errorf("%v messages dead-lettered by a bus outage", n)
		}
	}
}

// readyz returns /readyz's status and its checks.
func readyz(t *testing.T, ta *testApp) (int, map[string]string) {
	t.Helper()
	resp, err := http.Get(ta.opsURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Checks map[string]string `json:"checks"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("/readyz body: %v", err)
	}
	return resp.StatusCode, body.Checks
}

// An instance started while its bus (an external nats-server) is down
// starts all the same: /readyz says it is not ready and names the bus and
// the subscriptions it waits for, WebSocket connections are refused with
// 503, until the server comes up 5 s later; then it becomes ready and
// messages flow.
func TestRecoveryStartWithTheBusDown(t *testing.T) {
	port := freePort(t)
	ns := privateServer(t, "nats-server", port, "-js", "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-sd", t.TempDir())
	ta := startApp(t, func(c *config.Config) {
		c.Bus.Type = "nats"
		c.Bus.NATS.URL = "nats://" + ns.Addr()
		c.Bus.NATS.SubjectPrefix = "startdown"
	})
	bob := ta.client(t, "urn:sm:user:bob")
	upAt := time.Now().Add(5 * time.Second)
	faulttest.WaitFor(t, 4*time.Second, "the roles' first subscribe attempts", func() bool {
		_, checks := readyz(t, ta)
		return checks["ingress_subscription"] == "fail" && checks["delivery_subscription"] == "fail"
	})
	for polls := 0; time.Now().Before(upAt); polls++ {
		code, checks := readyz(t, ta)
		if code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz = %d with the bus down, want 503", code)
		}
		for _, what := range []string{"bus", "ingress_subscription", "delivery_subscription"} {
			if checks[what] != "fail" {
				t.Fatalf("/readyz checks %v with the bus down: want %s failing", checks, what)
			}
		}
		if polls == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := bob.Connect(ctx)
			cancel()
			var ae *client.Error
			if err == nil || !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
				t.Fatalf("WebSocket connect with the bus down: %v, want a 503", err)
			}
		}
		time.Sleep(200 * time.Millisecond) // the bus stays down 5 s: this paces the polls
	}
	ns.Start()
	faulttest.WaitFor(t, 20*time.Second, "ready once the bus is up", func() bool {
		code, _ := readyz(t, ta)
		return code == http.StatusOK
	})
	conn := connect(t, bob)
	connected(t, ta, 1)
	ck := faulttest.NewChecker(t, ta.client(t, "urn:sm:user:alice"), "urn:sm:user:bob", 0)
	ck.Receive(conn)
	for range 20 {
		ck.SendOne()
	}
	faulttest.WaitFor(t, 10*time.Second, "the messages sent once the bus is up", ck.AllStoredArrived)
	ck.Check()
}

// Three pipeline instances share a PostgreSQL store: a message left
// stored and unrouted is routed once, by the one holding the sweep lease;
// when that one stops, another sweeps the next such message.
func TestRecoveryOneSweeperAtATime(t *testing.T) {
	pgURL, schema := pgSchema(t)
	apps := make([]*testApp, 3)
	for i := range apps {
		apps[i] = startApp(t, func(c *config.Config) {
			c.InstanceID = fmt.Sprintf("sweeper-%d", i)
			c.Roles = []string{config.RolePipeline}
			c.Store.Type = "postgres"
			c.Store.Postgres.Schema = schema
			c.DatabaseURL = pgURL
			c.Pipeline.RerouteAfter = 300 * time.Millisecond
		})
	}
	// A store handle of the test's own, as an instance that died after
	// its commit would have left the message.
	st, err := postgres.Open(ctxT(t), pgURL, postgres.Options{Schema: schema, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	rerouted := func(ta *testApp) float64 { return testutil.ToFloat64(ta.app.Metrics().Rerouted) }
	total := func(tas []*testApp) float64 {
		n := 0.0
		for _, ta := range tas {
			n += rerouted(ta)
		}
		return n
	}
	leave := func(payload string) {
		now := envelope.Now().Add(-time.Second)
		env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:nobody", Payload: []byte(payload), CreatedAt: now}
		if _, err := st.PutMessages(ctxT(t), []*envelope.Envelope{env}); err != nil {
			t.Fatal(err)
		}
	}

	leave("first")
	faulttest.WaitFor(t, 10*time.Second, "the unrouted message swept", func() bool { return total(apps) >= 1 })
	// A dozen sweep rounds of each instance: none routes it again.
	if happensWithin(1200*time.Millisecond, func() bool { return total(apps) > 1 }) {
		t.Fatalf("the unrouted message was routed %v times, want once", total(apps))
	}
	var sweeper int
	for i, ta := range apps {
		if rerouted(ta) == 1 {
			sweeper = i
		}
	}
	apps[sweeper].stop()
	rest := append(append([]*testApp{}, apps[:sweeper]...), apps[sweeper+1:]...)
	leave("second")
	faulttest.WaitFor(t, 10*time.Second, "the next unrouted message swept by another instance", func() bool { return total(rest) >= 1 })
	if happensWithin(1200*time.Millisecond, func() bool { return total(rest) > 1 }) {
		t.Fatalf("the second unrouted message was routed %v times, want once", total(rest))
	}
}
