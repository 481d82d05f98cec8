package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/push/webpush"
	"github.com/go-routing-service/routingservice/internal/testkit"
	"github.com/go-routing-service/routingservice/pkg/client"
)

func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// sharedEngines returns the PostgreSQL URL and Redis address of the test
// engines, a fresh schema (dropped after the test) and a fresh Redis key
// prefix.
func sharedEngines(t *testing.T) (pgURL, redisAddr, schema, keyPrefix string) {
	t.Helper()
	pgURL = os.Getenv("ROUTING_TEST_POSTGRES_URL")
	redisAddr = os.Getenv("ROUTING_TEST_REDIS_ADDR")
	if pgURL == "" || redisAddr == "" {
		t.Skip("set ROUTING_TEST_POSTGRES_URL and ROUTING_TEST_REDIS_ADDR to run the multi-instance tests")
	}
	schema = randomName("multi_")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, pgURL); err == nil {
			_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
			conn.Close(ctx)
		}
	})
	keyPrefix = randomName("multi:") + ":"
	testkit.DeleteRedisKeys(t, redisAddr, keyPrefix)
	return pgURL, redisAddr, schema, keyPrefix
}

// sharedBackends returns the configuration (YAML) and environment that make
// instances share PostgreSQL (a fresh schema), Redis (a fresh key prefix) and
// the bus given by busYAML.
func sharedBackends(t *testing.T, busYAML string) (string, []string) {
	t.Helper()
	pgURL, redisAddr, schema, keyPrefix := sharedEngines(t)
	yaml := fmt.Sprintf(`store: {type: postgres, postgres_schema: %s}
presence: {type: redis, ttl: 3s, heartbeat: 1s, redis: {addr: %q, key_prefix: %q}}
%s
`, schema, redisAddr, keyPrefix, busYAML)
	return yaml, []string{"DATABASE_URL=" + pgURL}
}

// instanceConfig is the configuration (YAML) of one instance of a
// many-instance test.
type instanceConfig func(t *testing.T, id, roles string) string

// The example setup on open engines, config/nats-postgres-redis.yaml, as
// it is shipped, pointed at the test engines: only addresses, names that
// keep tests apart, a single-server stream replica count and shorter timers
// differ, and the links: the test engines speak no TLS and need no
// credentials, which production refuses, so the instances run in local
// mode.
func TestManyInstancesNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	natsURL := os.Getenv("ROUTING_TEST_NATS_URL")
	if natsURL == "" {
		t.Skip("set ROUTING_TEST_NATS_URL to run the multi-instance test on NATS")
	}
	pgURL, redisAddr, schema, keyPrefix := sharedEngines(t)
	_, priv, err := webpush.GenerateVAPIDKeys()
	if err != nil {
		t.Fatal(err)
	}
	vapidFile := filepath.Join(t.TempDir(), "vapid_private_key")
	if err := os.WriteFile(vapidFile, []byte(priv+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	example := readFile(t, filepath.Join("..", "..", "config", "nats-postgres-redis.yaml"))
	p := randomName("m")
	deleteStreams(t, natsURL, p)
	test := fmt.Sprintf(`run_mode: local
store: {postgres_schema: %[1]s}
presence: {ttl: 3s, heartbeat: 1s, redis: {addr: %[2]q, key_prefix: %[3]q, tls: false}}
bus:
  ingress_topic: %[4]s-in
  ingress_subscription: %[4]s-pipe
  delivery_topic: %[4]s-dl
  ingress_dead_letter_topic: %[4]s-in-dlq
  delivery_dead_letter_topic: %[4]s-dl-dlq
  min_backoff: 100ms
  max_backoff: 500ms
  nats: {url: %[5]q, subject_prefix: %[4]s, replicas: 1, credentials_file: ""}
push: {webpush: {vapid_private_key_file: %[6]q}}
`, schema, redisAddr, keyPrefix, p, natsURL, vapidFile)
	runManyInstances(t, func(t *testing.T, id, roles string) string {
		return mergeYAML(t, example, test, fmt.Sprintf("instance_id: %s\nroles: %s\ndata_dir: %q\n", id, roles, t.TempDir()))
	}, "DATABASE_URL="+pgURL)
}

// runManyInstances starts three instances sharing the backends, with the
// roles spread over them: A runs api and pipeline, B runs all roles, C runs
// realtime only.
func runManyInstances(t *testing.T, config instanceConfig, env ...string) {
	a := startChildConfig(t, config(t, "inst-a", "[api, pipeline]"), env...)
	b := startChildConfig(t, config(t, "inst-b", "[api, pipeline, realtime]"), env...)
	c := startChildConfig(t, config(t, "inst-c", "[realtime]"), env...)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tok := func(sub string) string { return testToken(t, sub) }
	alice := &client.Client{APIURL: a.api, Token: tok("urn:sm:user:alice")}
	bobOn := func(inst *child) *client.Client {
		return &client.Client{APIURL: b.api, WSURL: inst.ws, Token: tok("urn:sm:user:bob")}
	}
	// waitLive makes sure each connection is registered: a probe sent after
	// the handshake reaches it either in its backlog (stored before the
	// connection registered) or live, so read until the probe arrives.
	waitLive := func(conns ...*client.Conn) {
		t.Helper()
		for _, conn := range conns {
			acc, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("probe"), Type: "probe"})
			if err != nil {
				t.Fatal(err)
			}
			for {
				env, err := conn.Next(ctx)
				if err != nil {
					t.Fatalf("probe %s never arrived: %v", acc.ID, err)
				}
				if env.ID == acc.ID {
					break
				}
			}
		}
	}
	drainAck := func(cl *client.Client) {
		for {
			p, err := cl.Fetch(ctx, "", 500)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Messages) == 0 {
				return
			}
			ids := make([]string, len(p.Messages))
			for i, m := range p.Messages {
				ids[i] = m.ID
			}
			if err := cl.Ack(ctx, ids...); err != nil {
				t.Fatal(err)
			}
		}
	}

	// 1. A sender on A reaches a recipient connected to C.
	onC, err := bobOn(c).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitLive(onC)
	acc, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("to C")})
	if err != nil {
		t.Fatal(err)
	}
	if env := nextNonProbe(t, ctx, onC); env.ID != acc.ID {
		t.Fatalf("on C: got %s want %s", env.ID, acc.ID)
	}

	// 2. Connections on B and C both get each live message.
	onB, err := bobOn(b).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitLive(onB)
	for i := 0; i < 5; i++ {
		acc, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte{byte(i)}})
		if err != nil {
			t.Fatal(err)
		}
		for name, conn := range map[string]*client.Conn{"B": onB, "C": onC} {
			if env := nextNonProbe(t, ctx, conn); env.ID != acc.ID {
				t.Fatalf("on %s: got %s want %s", name, env.ID, acc.ID)
			}
		}
	}
	drainAck(bobOn(b))

	// 3. Disconnect from C, reconnect on B: nothing sent meanwhile is lost.
	onC.Close()
	onB.Close()
	var meanwhile []string
	for i := 0; i < 10; i++ {
		acc, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("meanwhile")})
		if err != nil {
			t.Fatal(err)
		}
		meanwhile = append(meanwhile, acc.ID)
	}
	onB2, err := bobOn(b).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expectAll(t, ctx, onB2, meanwhile)
	onB2.Close()
	drainAck(bobOn(b))

	// 4. kill -9 C with bob connected there: every accepted message comes
	// back as backlog on B.
	onC2, err := bobOn(c).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitLive(onC2)
	drainAck(bobOn(b))
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.exited
	var afterKill []string
	for i := 0; i < 20; i++ {
		acc, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("after kill")})
		if err != nil {
			t.Fatal(err)
		}
		afterKill = append(afterKill, acc.ID)
	}
	onB3, err := bobOn(b).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer onB3.Close()
	expectAll(t, ctx, onB3, afterKill)
}

// nextNonProbe returns the next message that is not a probe.
func nextNonProbe(t *testing.T, ctx context.Context, conn *client.Conn) client.Envelope {
	t.Helper()
	for {
		env, err := conn.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if env.Type != "probe" {
			return env
		}
	}
}

// expectAll reads conn until every id in want has arrived.
func expectAll(t *testing.T, ctx context.Context, conn *client.Conn, want []string) {
	t.Helper()
	missing := map[string]bool{}
	for _, id := range want {
		missing[id] = true
	}
	for len(missing) > 0 {
		env, err := conn.Next(ctx)
		if err != nil {
			t.Fatalf("%d messages missing: %v", len(missing), err)
		}
		delete(missing, env.ID)
	}
}

// The same over Google Cloud Pub/Sub: the official fake (pstest) runs in
// this process on a loopback port, and the instances reach it through
// PUBSUB_EMULATOR_HOST.
func TestManyInstancesPubSub(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	srv := pstest.NewServer()
	t.Cleanup(func() { srv.Close() })
	shared, env := sharedBackends(t, `bus:
  type: pubsub
  ack_deadline: 10s
  min_backoff: 100ms
  max_backoff: 500ms
  pubsub: {project_id: multi-test}
`)
	runManyInstances(t, func(t *testing.T, id, roles string) string {
		return fmt.Sprintf("instance_id: %s\nroles: %s\ndata_dir: %q\n%s", id, roles, t.TempDir(), shared)
	}, append(env, "PUBSUB_EMULATOR_HOST="+srv.Addr)...)
}
