package app_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/pkg/client"
)

func gaugeValue(g prometheus.Gauge) float64 { return testutil.ToFloat64(g) }

// idle waits until the instance holds no connection (earlier subtests' closes
// have been processed) and returns 0.
func idle(t *testing.T, ta *testApp) float64 {
	t.Helper()
	eventually(t, "no connections", func() bool { return gaugeValue(ta.app.Metrics().WSConnections) == 0 })
	return 0
}

func TestEndToEnd(t *testing.T) {
	ta := startApp(t, nil)
	alice := ta.client(t, "urn:sm:user:alice")

	t.Run("online delivery", func(t *testing.T) {
		bob := ta.client(t, "urn:sm:user:bob-online")
		idle(t, ta)
		conn := connect(t, bob)
		connected(t, ta, 1)
		acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob-online", Payload: []byte{0, 1, 2, 255}, Type: "chat"})
		if err != nil {
			t.Fatal(err)
		}
		env := next(t, conn)
		if env.ID != acc.ID || env.Sender != "urn:sm:user:alice" || env.Recipient != "urn:sm:user:bob-online" ||
			!bytes.Equal(env.Payload, []byte{0, 1, 2, 255}) || env.Type != "chat" || !env.CreatedAt.Equal(acc.CreatedAt) {
			t.Fatalf("got %+v, accepted %+v", env, acc)
		}
		if err := conn.Ack(ctxT(t), env.ID); err != nil {
			t.Fatal(err)
		}
		eventually(t, "ack to empty the queue", func() bool {
			p, err := bob.Fetch(ctxT(t), "", 10)
			return err == nil && len(p.Messages) == 0
		})
	})

	t.Run("offline store fetch ack", func(t *testing.T) {
		carol := ta.client(t, "urn:sm:user:carol")
		var ids []string
		for i := 0; i < 5; i++ {
			acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:carol", Payload: []byte{byte(i)}})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, acc.ID)
		}
		var all []client.Envelope
		eventually(t, "5 stored messages", func() bool {
			all = all[:0]
			cursor := ""
			for {
				p, err := carol.Fetch(ctxT(t), cursor, 2)
				if err != nil {
					t.Fatal(err)
				}
				if len(p.Messages) > 2 {
					t.Fatalf("page of %d over limit 2", len(p.Messages))
				}
				all = append(all, p.Messages...)
				if p.NextCursor == "" {
					return len(all) == 5
				}
				cursor = p.NextCursor
			}
		})
		for i, env := range all {
			if env.ID != ids[i] || env.Payload[0] != byte(i) {
				t.Fatalf("message %d: got %s, want %s (in the order sent)", i, env.ID, ids[i])
			}
		}
		// Another user's ack of carol's ids removes nothing.
		if err := alice.Ack(ctxT(t), ids...); err != nil {
			t.Fatal(err)
		}
		if p, _ := carol.Fetch(ctxT(t), "", 100); len(p.Messages) != 5 {
			t.Fatalf("another user's ack removed carol's messages: %d left", len(p.Messages))
		}
		if err := carol.Ack(ctxT(t), ids[:3]...); err != nil {
			t.Fatal(err)
		}
		p, err := carol.Fetch(ctxT(t), "", 100)
		if err != nil || len(p.Messages) != 2 || p.Messages[0].ID != ids[3] || p.NextCursor != "" {
			t.Fatalf("after ack: %+v %v", p, err)
		}
	})

	t.Run("backlog on reconnect", func(t *testing.T) {
		dave := ta.client(t, "urn:sm:user:dave")
		var ids []string
		for i := 0; i < 3; i++ {
			acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:dave", Payload: []byte("x")})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, acc.ID)
		}
		eventually(t, "3 stored", func() bool {
			p, err := dave.Fetch(ctxT(t), "", 10)
			return err == nil && len(p.Messages) == 3
		})
		idle(t, ta)
		conn, err := dave.Connect(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for i := range ids {
			if env := next(t, conn); env.ID != ids[i] {
				t.Fatalf("backlog %d: got %s want %s", i, env.ID, ids[i])
			}
		}
		// Then live.
		connected(t, ta, 1)
		acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:dave", Payload: []byte("live")})
		if err != nil {
			t.Fatal(err)
		}
		if env := next(t, conn); env.ID != acc.ID {
			t.Fatalf("live: got %s want %s", env.ID, acc.ID)
		}
		// Ack only the first; the rest come back on the next connection.
		if err := conn.Ack(ctxT(t), ids[0]); err != nil {
			t.Fatal(err)
		}
		eventually(t, "ack over websocket", func() bool {
			p, err := dave.Fetch(ctxT(t), "", 10)
			return err == nil && len(p.Messages) == 3
		})
		conn.Close()
		conn2 := connect(t, dave)
		for _, want := range []string{ids[1], ids[2], acc.ID} {
			if env := next(t, conn2); env.ID != want {
				t.Fatalf("second backlog: got %s want %s", env.ID, want)
			}
		}
	})

	t.Run("fan-out to every connection", func(t *testing.T) {
		erin := ta.client(t, "urn:sm:user:erin")
		before := idle(t, ta)
		c1 := connect(t, erin)
		c2 := connect(t, erin)
		connected(t, ta, before+2)
		acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:erin", Payload: []byte("both")})
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range []*client.Conn{c1, c2} {
			if env := next(t, c); env.ID != acc.ID {
				t.Fatalf("connection %d got %s want %s", i, env.ID, acc.ID)
			}
		}
	})

	t.Run("ephemeral", func(t *testing.T) {
		frank := ta.client(t, "urn:sm:user:frank")
		// Offline: accepted, never stored, never delivered later.
		if _, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:frank", Payload: []byte("gone"), Ephemeral: true}); err != nil {
			t.Fatal(err)
		}
		// A stored message sent after it: once it is fetchable the pipeline
		// has handled the ephemeral one before it too.
		marker, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:frank", Payload: []byte("kept")})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "marker stored", func() bool {
			p, err := frank.Fetch(ctxT(t), "", 10)
			return err == nil && len(p.Messages) > 0
		})
		p, _ := frank.Fetch(ctxT(t), "", 10)
		if len(p.Messages) != 1 || p.Messages[0].ID != marker.ID {
			t.Fatalf("ephemeral message was stored: %+v", p.Messages)
		}
		if err := frank.Ack(ctxT(t), marker.ID); err != nil {
			t.Fatal(err)
		}
		// Online: delivered live.
		before := idle(t, ta)
		conn := connect(t, frank)
		connected(t, ta, before+1)
		acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:frank", Payload: []byte("typing"), Ephemeral: true})
		if err != nil {
			t.Fatal(err)
		}
		if env := next(t, conn); env.ID != acc.ID || !env.Ephemeral {
			t.Fatalf("got %+v", env)
		}
		if p, _ := frank.Fetch(ctxT(t), "", 10); len(p.Messages) != 0 {
			t.Fatalf("ephemeral message stored: %+v", p.Messages)
		}
	})

	t.Run("idempotent resend", func(t *testing.T) {
		grace := ta.client(t, "urn:sm:user:grace")
		m := client.Message{Recipient: "urn:sm:user:grace", Payload: []byte("once"), IdempotencyKey: "key-1"}
		a1, err := alice.Send(ctxT(t), m)
		if err != nil {
			t.Fatal(err)
		}
		a2, err := alice.Send(ctxT(t), m)
		if err != nil {
			t.Fatal(err)
		}
		if a1.ID != a2.ID || !a1.CreatedAt.Equal(a2.CreatedAt) {
			t.Fatalf("resend answered differently: %+v vs %+v", a1, a2)
		}
		// Same key from another sender: another message.
		heidi := ta.client(t, "urn:sm:user:heidi")
		a3, err := heidi.Send(ctxT(t), m)
		if err != nil {
			t.Fatal(err)
		}
		if a3.ID == a1.ID {
			t.Fatal("idempotency key not scoped to the sender")
		}
		eventually(t, "two messages", func() bool {
			p, err := grace.Fetch(ctxT(t), "", 10)
			return err == nil && len(p.Messages) >= 2
		})
		p, _ := grace.Fetch(ctxT(t), "", 10)
		if len(p.Messages) != 2 {
			t.Fatalf("want exactly 2 messages (one per sender), got %d", len(p.Messages))
		}
	})

	t.Run("operations endpoints", func(t *testing.T) {
		for _, u := range []string{ta.opsURL + "/healthz", ta.opsURL + "/readyz", ta.opsURL + "/metrics"} {
			if code := get(t, u); code != http.StatusOK {
				t.Errorf("%s: %d", u, code)
			}
		}
		// Not on the public ports: nothing there to probe without a token.
		for _, u := range []string{ta.apiURL + "/healthz", ta.apiURL + "/readyz", ta.apiURL + "/metrics",
			"http://" + ta.app.WSAddr() + "/healthz", "http://" + ta.app.WSAddr() + "/readyz", "http://" + ta.app.WSAddr() + "/metrics"} {
			if code := get(t, u); code != http.StatusNotFound {
				t.Errorf("%s on a public port: %d, want 404", u, code)
			}
		}
	})
}

// A connection that is open while its backlog is read gets a message that
// arrives meanwhile once, not twice.
func TestBacklogThenLiveSendsOnce(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.Realtime.BacklogPage = 1 })
	alice := ta.client(t, "urn:sm:user:alice")
	ivan := ta.client(t, "urn:sm:user:ivan")
	const n = 50
	for i := 0; i < n; i++ {
		if _, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:ivan", Payload: []byte("b")}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "backlog stored", func() bool {
		p, err := ivan.Fetch(ctxT(t), "", 100)
		return err == nil && len(p.Messages) == n
	})
	conn := connect(t, ivan)
	// Send while the backlog (one message per page) is being read.
	var live []string
	for i := 0; i < 10; i++ {
		acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:ivan", Payload: []byte("l")})
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, acc.ID)
	}
	seen := map[string]int{}
	for len(seen) < n+len(live) {
		env := next(t, conn)
		seen[env.ID]++
		if seen[env.ID] > 1 {
			t.Fatalf("message %s sent twice on one connection", env.ID)
		}
	}
	for _, id := range live {
		if seen[id] != 1 {
			t.Fatalf("live message %s not received", id)
		}
	}
}

// An instance that dies between storing a message and publishing its
// routing event leaves it stored and unrouted: the sweep of unrouted
// messages routes it, live to a connected recipient, once it is
// pipeline.reroute_after old, and only once.
func TestSweepRoutesStoredButUnroutedMessage(t *testing.T) {
	var st store.Store
	ta := startAppWith(t, func(c *config.Config) { c.Pipeline.RerouteAfter = 300 * time.Millisecond },
		app.Options{WrapStore: func(s store.Store) store.Store { st = s; return s }})
	bob := ta.client(t, "urn:sm:user:bob-sweep")
	conn := connect(t, bob)
	connected(t, ta, 1)

	// What the API does before its publish, and no more.
	now := envelope.Now()
	env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob-sweep", Payload: []byte("lost"), CreatedAt: now}
	if _, err := st.PutMessages(ctxT(t), []*envelope.Envelope{env}); err != nil {
		t.Fatal(err)
	}
	got := next(t, conn)
	if got.ID != env.ID || string(got.Payload) != "lost" {
		t.Fatalf("received %+v, want the stored message", got)
	}
	if got.CreatedAt.Before(now) {
		t.Fatalf("received with created_at %v, want %v", got.CreatedAt, now)
	}
	eventually(t, "the rerouted count", func() bool { return testutil.ToFloat64(ta.app.Metrics().Rerouted) == 1 })
	unrouted, err := st.Unrouted(ctxT(t), time.Now().Add(time.Hour), 10)
	if err != nil || len(unrouted) != 0 {
		t.Fatalf("unrouted after the sweep: %d, %v; want none", len(unrouted), err)
	}
}

// With no pipeline to drain the ingress queue, the API accepts messages
// until the backlog passes api.max_ingress_backlog, then refuses them with
// 503 and Retry-After; every 202 is stored, nothing refused is.
func TestBackpressureRefusesPastTheBacklogLimit(t *testing.T) {
	ta := startAppWith(t, func(c *config.Config) {
		c.Roles = []string{config.RoleAPI}
		c.API.MaxIngressBacklog = 10
	}, app.Options{})
	alice := ta.client(t, "urn:sm:user:alice")
	bob := ta.client(t, "urn:sm:user:bob-backlog")
	accepted, refused := 0, 0
	deadline := time.Now().Add(10 * time.Second)
	for refused == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no send refused after %d accepted with a backlog limit of 10", accepted)
		}
		_, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob-backlog", Payload: []byte("x")})
		var apiErr *client.Error
		switch {
		case err == nil:
			accepted++
		case errors.As(err, &apiErr) && apiErr.Status == http.StatusServiceUnavailable && apiErr.Code == "backend_unavailable" && apiErr.RetryAfter > 0:
			refused++
		default:
			t.Fatalf("send: %v", err)
		}
	}
	if accepted < 10 {
		t.Fatalf("refused after %d accepted, want at least the limit of 10", accepted)
	}
	if n := pending(t, bob); n != accepted {
		t.Fatalf("%d messages stored, want the %d accepted", n, accepted)
	}
	if v := testutil.ToFloat64(ta.app.Metrics().SendsRefused.WithLabelValues("backlog")); v != float64(refused) {
		t.Fatalf("refused counter %v, want %d", v, refused)
	}
}

// With the api and pipeline roles in one instance, what its API stores is
// routed in process, not over the ingress topic; pipeline.local_handoff:
// false sends it over the topic. Delivered either way.
func TestLocalHandoff(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprint("local_handoff=", on), func(t *testing.T) {
			ta := startApp(t, func(c *config.Config) { c.Pipeline.LocalHandoff = on })
			alice := ta.client(t, "urn:sm:user:alice")
			bob := ta.client(t, "urn:sm:user:bob-local")
			conn := connect(t, bob)
			connected(t, ta, 1)
			const n = 5
			var ids []string
			for i := range n {
				acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob-local", Payload: []byte(fmt.Sprint(i))})
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, acc.ID)
			}
			for i, id := range ids {
				if got := next(t, conn); got.ID != id {
					t.Fatalf("delivery %d is %s, want %s", i, got.ID, id)
				}
			}
			want := 0.0
			if on {
				want = n
			}
			if got := testutil.ToFloat64(ta.app.Metrics().IngressLocal.WithLabelValues("routed")); got != want {
				t.Errorf("routed in process: %v, want %v", got, want)
			}
		})
	}
}
