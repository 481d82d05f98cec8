package main

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// pubsubAckDeadline is the engine's ack deadline in the end-to-end test:
// what an instance that dies held comes back this long after it died.
const pubsubAckDeadline = 10 * time.Second

// The service on Pub/Sub, PostgreSQL and Redis, driven as a client would:
// the official fake served over gRPC in this process, the service binary
// in a child process, reaching it through PUBSUB_EMULATOR_HOST. The sweep
// of unrouted messages is set far beyond the test, so that whatever is
// routed was routed by the Pub/Sub engine.
func TestPubSubEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	srv := pstest.NewServerWithPort(0)
	t.Cleanup(func() { _ = srv.Close() })
	const project = "e2e-test"
	shared, env := sharedBackends(t, fmt.Sprintf(`bus:
  type: pubsub
  ack_deadline: %s
  min_backoff: 100ms
  max_backoff: 500ms
  pubsub: {project_id: %s}
pipeline: {reroute_after: 1h}
`, pubsubAckDeadline, project))
	env = append(env, "PUBSUB_EMULATOR_HOST="+srv.Addr)
	cfg := "data_dir: " + t.TempDir() + "\n" + shared
	inst := startChildConfig(t, cfg, env...)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	alice := func() *client.Client {
		return &client.Client{APIURL: inst.api, WSURL: inst.ws, Token: testToken(t, "urn:sm:user:alice")}
	}
	user := func(name string) *client.Client {
		return &client.Client{APIURL: inst.api, WSURL: inst.ws, Token: testToken(t, "urn:sm:user:"+name)}
	}
	send := func(to, payload string) string {
		t.Helper()
		acc, err := alice().Send(ctx, client.Message{Recipient: "urn:sm:user:" + to, Payload: []byte(payload)})
		if err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
		return acc.ID
	}

	// The stages run on this goroutine: a child process started by a
	// subtest's goroutine may be killed when that goroutine's thread ends
	// (its parent-death signal follows the thread).
	stage := func(name string, f func(t *testing.T)) {
		t.Log("stage:", name)
		f(t)
	}

	stage("OnlineDelivery", func(t *testing.T) {
		conn, err := user("bob").Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// The first message arrives in the backlog or live, whichever
		// comes first; once it has, the connection is registered.
		first := send("bob", "hello")
		expectInOrder(t, ctx, conn, []string{first})
		var want []string
		for i := range 10 {
			want = append(want, send("bob", fmt.Sprint("live ", i)))
		}
		expectInOrder(t, ctx, conn, want)
	})

	stage("OfflineFetchInOrder", func(t *testing.T) {
		var want []string
		for i := range 150 {
			want = append(want, send("carol", fmt.Sprint("offline ", i)))
		}
		got := fetchAll(t, ctx, user("carol"))
		if len(got) != len(want) {
			t.Fatalf("fetched %d messages, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("message %d: got %s, want %s (not in the order sent)", i, got[i], want[i])
			}
		}
		if err := user("carol").Ack(ctx, got...); err != nil {
			t.Fatal(err)
		}
		if left := fetchAll(t, ctx, user("carol")); len(left) != 0 {
			t.Fatalf("%d messages left after the ack", len(left))
		}
	})

	stage("Kill9NothingLostNoRecipientBlocked", func(t *testing.T) {
		// Concurrent sends to one offline recipient, so that the pipeline
		// is behind when the instance dies right after the last 202.
		var (
			mu     sync.Mutex
			before []string
			wg     sync.WaitGroup
			errs   = make(chan error, 20)
		)
		for i := range 20 {
			wg.Go(func() {
				acc, err := alice().Send(ctx, client.Message{Recipient: "urn:sm:user:dave", Payload: []byte(fmt.Sprint("before kill ", i))})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				before = append(before, acc.ID)
				mu.Unlock()
			})
		}
		wg.Wait()
		killed := time.Now()
		if err := inst.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-inst.exited
		close(errs)
		for err := range errs {
			t.Fatalf("send before the kill: %v", err)
		}
		inst = startChildConfig(t, cfg, env...)

		// Everything answered 202 is there: in the backlog on connect.
		conn, err := user("dave").Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		expectAll(t, ctx, conn, before)
		// New messages to the same recipient are routed live: its ordering
		// key is not held by what the dead instance had leased. They come
		// at most the ack deadline after the kill (plus the start).
		lctx, lcancel := context.WithTimeout(ctx, pubsubAckDeadline+30*time.Second)
		defer lcancel()
		var after []string
		for i := range 5 {
			after = append(after, send("dave", fmt.Sprint("after restart ", i)))
		}
		expectAll(t, lctx, conn, after)
		t.Logf("messages sent after the restart delivered live %s after the kill", time.Since(killed).Round(100*time.Millisecond))
		// And other recipients flow as before.
		conn2, err := user("erin").Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn2.Close()
		expectAll(t, lctx, conn2, []string{send("erin", "other recipient")})
		got := fetchAll(t, ctx, user("dave"))
		have := map[string]bool{}
		for _, id := range got {
			have[id] = true
		}
		for _, id := range append(before, after...) {
			if !have[id] {
				t.Fatalf("accepted message %s lost across kill -9", id)
			}
		}
	})

	stage("PoisonDeadLetteredOthersFlow", func(t *testing.T) {
		conn, err := user("frank").Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		expectAll(t, ctx, conn, []string{send("frank", "before poison")})
		// A routing event that is no envelope, published by hand with the
		// recipient's ordering key, ahead of the recipient's next messages.
		const poison = "poison-e2e"
		srv.PublishOrdered("projects/"+project+"/topics/routing-ingress", []byte("not an envelope"),
			map[string]string{gcppubsub.AttrMessageID: poison}, "urn:sm:user:frank")
		var want []string
		for i := range 5 {
			want = append(want, send("frank", fmt.Sprint("after poison ", i)))
		}
		expectInOrder(t, ctx, conn, want)
		deadline := time.Now().Add(30 * time.Second)
		for {
			var dead *pstest.Message
			for _, m := range srv.Messages() {
				if m.Topic == "projects/"+project+"/topics/routing-ingress-dlq" && m.Attributes[gcppubsub.AttrMessageID] == poison {
					dead = m
				}
			}
			if dead != nil {
				if dead.Attributes[bus.AttrDeadReason] == "" || dead.OrderingKey != "urn:sm:user:frank" {
					t.Fatalf("dead letter without reason or ordering key: %v %q", dead.Attributes, dead.OrderingKey)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the poison message never reached the ingress dead-letter topic")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// expectInOrder reads conn until every id in want has arrived, and fails
// when they arrive out of order (repeats of an earlier one are skipped:
// delivery is at-least-once).
func expectInOrder(t *testing.T, ctx context.Context, conn *client.Conn, want []string) {
	t.Helper()
	index := map[string]int{}
	for i, id := range want {
		index[id] = i
	}
	next := 0
	for next < len(want) {
		env, err := conn.Next(ctx)
		if err != nil {
			t.Fatalf("%d of %d messages arrived: %v", next, len(want), err)
		}
		i, ok := index[env.ID]
		switch {
		case !ok || i < next:
		case i == next:
			next++
		default:
			t.Fatalf("message %d arrived before message %d", i, next)
		}
	}
}

// fetchAll pages through c's pending messages and returns their ids in the
// order served.
func fetchAll(t *testing.T, ctx context.Context, c *client.Client) []string {
	t.Helper()
	var ids []string
	cursor := ""
	for {
		p, err := c.Fetch(ctx, cursor, 50)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			ids = append(ids, m.ID)
		}
		if p.NextCursor == "" {
			return ids
		}
		cursor = p.NextCursor
	}
}
