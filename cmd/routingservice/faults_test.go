package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/admin"
	"github.com/go-routing-service/routingservice/internal/faulttest"
	presenceredis "github.com/go-routing-service/routingservice/internal/presence/redis"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// The fault tests of whole instances: each runs the service in child
// processes, streams numbered messages through faulttest checkers (one
// recipient each), and hurts an instance mid-stream.

// metricSum sums the samples of the metric name on an instance's /metrics
// whose labels include every one of labels (each written `key="value"`).
func metricSum(t *testing.T, opsURL, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(opsURL + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", opsURL, err)
	}
	defer resp.Body.Close()
	var sum float64
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest == "" || (rest[0] != '{' && rest[0] != ' ')) {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		sel := rest[:i]
		if slices.ContainsFunc(labels, func(l string) bool { return !strings.Contains(sel, l) }) {
			continue
		}
		v, err := strconv.ParseFloat(rest[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// expectNoDeadLetters fails the test when either dead-letter queue holds a
// message, as `routingservice dlq list` shows it through the admin socket
// of the instance whose config file is cfgPath, or when the instances
// counted one in routing_dead_lettered_total.
func expectNoDeadLetters(t *testing.T, cfgPath string, ops ...string) {
	t.Helper()
	for _, q := range []string{"ingress", "delivery"} {
		out, errOut, err := runDLQ(t, "list", q, "--json", "--config", cfgPath)
		if err != nil {
			t.Fatalf("dlq list %s: %v: %s", q, err, errOut)
		}
		var msgs []admin.DeadMessage
		if err := json.Unmarshal([]byte(out), &msgs); err != nil {
			t.Fatalf("dlq list %s: %v in %q", q, err, out)
		}
		if len(msgs) != 0 {
			t.Errorf("%d messages dead-lettered in %s: %+v", len(msgs), q, msgs)
		}
	}
	for _, o := range ops {
		if n := metricSum(t, o, "routing_dead_lettered_total"); n != 0 {
			t.Errorf("%s: routing_dead_lettered_total = %v", o, n)
		}
	}
}

// deleteStreams removes, after the test, the JetStream streams an instance
// on the shared NATS server made under subject prefix p.
func deleteStreams(t *testing.T, natsURL, p string) {
	t.Cleanup(func() {
		nc, err := nats.Connect(natsURL)
		if err != nil {
			t.Logf("delete streams %s-*: %v", p, err)
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range []string{"-ingress", "-delivery", "-ingress-dlq", "-delivery-dlq"} {
			if err := js.DeleteStream(ctx, p+s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Logf("delete stream %s: %v", p+s, err)
			}
		}
	})
}

// recipients of the fault tests' streams.
var faultRecipients = []string{"urn:sm:user:bob", "urn:sm:user:carol", "urn:sm:user:dave"}

// userOn is a client of sub on inst (its API and its WebSocket listener).
func userOn(t *testing.T, inst *child, sub string) *client.Client {
	return &client.Client{APIURL: inst.api, WSURL: inst.ws, Token: testToken(t, sub)}
}

// connectAll connects the recipient of checker i to insts[i % len(insts)]
// and returns the channels on which each connection's end is reported.
func connectAll(t *testing.T, ctx context.Context, cks []*faulttest.Checker, insts ...*child) []<-chan error {
	t.Helper()
	ended := make([]<-chan error, len(cks))
	for i, ck := range cks {
		inst := insts[i%len(insts)]
		conn, err := userOn(t, inst, faultRecipients[i]).Connect(ctx)
		if err != nil {
			t.Fatalf("connect %s to %s: %v", faultRecipients[i], inst.ws, err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		ended[i] = ck.Receive(conn)
	}
	return ended
}

// sendUntilLive sends one message per checker and waits until each has
// arrived: the connections are registered.
func sendUntilLive(t *testing.T, cks []*faulttest.Checker) {
	t.Helper()
	for _, ck := range cks {
		n := ck.Sent()
		ck.SendOne()
		if o := ck.Outcome(n); o != faulttest.Accepted {
			t.Fatalf("probe %d not accepted (outcome %d)", n, o)
		}
		faulttest.WaitFor(t, 15*time.Second, fmt.Sprintf("probe %d", n), func() bool { return ck.Received(n) })
	}
}

// waitAccepted waits until each checker has k more sends accepted than it
// had when called.
func waitAccepted(t *testing.T, cks []*faulttest.Checker, k int, what string) {
	t.Helper()
	base := make([]int, len(cks))
	for i, ck := range cks {
		base[i] = ck.Count(faulttest.Accepted, nil)
	}
	faulttest.WaitFor(t, 20*time.Second, what, func() bool {
		for i, ck := range cks {
			if ck.Count(faulttest.Accepted, nil) < base[i]+k {
				return false
			}
		}
		return true
	})
}

// An instance is killed (SIGKILL) with the recipients' connections on it,
// while senders post a steady stream through another instance: the
// clients reconnect, two to another realtime instance and one to the
// killed instance restarted under the same id, and every message answered
// 202 arrives, those sent while the dead instance's presence entries were
// all the recipients had included (they are stored, and pushed when
// unacknowledged); after the reconnect new messages arrive live on the new
// connections; none refused is delivered; nothing is dead-lettered.
func TestFaultInstanceKilledWithConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	natsURL := os.Getenv("ROUTING_TEST_NATS_URL")
	if natsURL == "" {
		t.Skip("set ROUTING_TEST_NATS_URL to run the instance fault tests on NATS")
	}
	pgURL, redisAddr, schema, keyPrefix := sharedEngines(t)
	p := randomName("kill")
	deleteStreams(t, natsURL, p)
	const presenceTTL = 30 * time.Second // the dead instance's entries outlive the test
	shared := fmt.Sprintf(`shutdown_timeout: 10s
store: {type: postgres, postgres_schema: %s}
presence: {type: redis, ttl: %s, heartbeat: 1s, redis: {addr: %q, key_prefix: %q}}
bus: {type: nats, min_backoff: 100ms, max_backoff: 500ms, nats: {url: %q, subject_prefix: %s}}
push: {unacked_after: 2s, webpush: {enabled: false}}
`, schema, presenceTTL, redisAddr, keyPrefix, natsURL, p)
	start := func(id, roles, dataDir string) *child {
		return startChildConfig(t, fmt.Sprintf("%sinstance_id: %s\nroles: %s\ndata_dir: %q\n", shared, id, roles, dataDir),
			"DATABASE_URL="+pgURL)
	}
	a := start("inst-a", "[api, pipeline]", t.TempDir())
	b := start("inst-b", "[realtime]", t.TempDir())
	cDir := t.TempDir()
	c := start("inst-c", "[realtime]", cDir)
	pres, err := presenceredis.New(context.Background(), presenceredis.Options{Addr: redisAddr, KeyPrefix: keyPrefix, TTL: presenceTTL})
	if err != nil {
		t.Fatal(err)
	}
	defer pres.Close()
	holds := func(user, inst string) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		insts, err := pres.Instances(ctx, user)
		if err != nil {
			t.Fatalf("presence of %s: %v", user, err)
		}
		return slices.Contains(insts, inst)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cks := make([]*faulttest.Checker, len(faultRecipients))
	for i, r := range faultRecipients {
		cks[i] = faulttest.NewChecker(t, userOn(t, a, "urn:sm:user:alice"), r, 0)
	}
	onC := connectAll(t, ctx, cks, c)
	sendUntilLive(t, cks)
	stopSending := startSending(t, cks, 25*time.Millisecond)
	waitAccepted(t, cks, 20, "messages before the kill")

	pushedBefore := metricSum(t, a.ops, "routing_push_unacked_total")
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.exited
	awayFrom := make([]int, len(cks))
	for i, ck := range cks {
		awayFrom[i] = ck.Sent()
	}
	for i, e := range onC {
		select {
		case <-e:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the connection to the killed instance is still open", faultRecipients[i])
		}
	}
	// The clients stay away a while: the stream goes on to recipients whose
	// only presence entries are the dead instance's.
	waitAccepted(t, cks, 20, "messages while the recipients are away")
	for _, r := range faultRecipients {
		if !holds(r, "inst-c") {
			t.Fatalf("presence no longer lists the killed instance for %s: the test did not send through stale entries", r)
		}
	}
	// Routed to a dead instance, they are still stored: unacknowledged,
	// they get a push.
	faulttest.WaitFor(t, 15*time.Second, "pushes for messages routed to the dead instance", func() bool {
		return metricSum(t, a.ops, "routing_push_unacked_total") > pushedBefore
	})

	away := 0
	for i, ck := range cks {
		away += len(ck.Missing(ck.Sent())) - len(ck.Missing(awayFrom[i]))
	}
	t.Logf("%d messages accepted while the recipients were away, %v unacknowledged pushes since the kill",
		away, metricSum(t, a.ops, "routing_push_unacked_total")-pushedBefore)

	// The killed instance comes back under the same id; the recipients
	// reconnect, bob and carol to the other realtime instance, dave to
	// the restarted one: the backlog first.
	c = start("inst-c", "[realtime]", cDir)
	onNew := connectAll(t, ctx, cks, b, b, c)
	backlog := make([]int, len(cks))
	for i, ck := range cks {
		backlog[i] = ck.Sent()
	}
	faulttest.WaitFor(t, 20*time.Second, "every message accepted before the reconnect", func() bool {
		for i, ck := range cks {
			if len(ck.Missing(backlog[i])) > 0 {
				return false
			}
		}
		return true
	})
	// Then live: what is sent from now on arrives on the same connections.
	live := make([]int, len(cks))
	for i, ck := range cks {
		live[i] = ck.Sent()
	}
	liveFrames := func() float64 {
		return metricSum(t, b.ops, "routing_websocket_messages_sent_total", `kind="live"`) +
			metricSum(t, c.ops, "routing_websocket_messages_sent_total", `kind="live"`)
	}
	liveBefore := liveFrames()
	waitAccepted(t, cks, 30, "messages after the reconnect")
	stopSending()
	faulttest.WaitFor(t, 20*time.Second, "every accepted message", func() bool {
		for _, ck := range cks {
			if !ck.AllStoredArrived() {
				return false
			}
		}
		return true
	})
	for i, ck := range cks {
		select {
		case err := <-onNew[i]:
			t.Errorf("%s: the connection made after the kill ended: %v", faultRecipients[i], err)
		default:
		}
		for n := live[i]; n < ck.Sent(); n++ {
			if ck.Outcome(n) == faulttest.Accepted && ck.ReceivedOn(n) != 2 {
				t.Errorf("%s: message %d, sent after the reconnect, arrived on connection %d, not on the open one", faultRecipients[i], n, ck.ReceivedOn(n))
			}
		}
		ck.Check()
	}
	if d := liveFrames() - liveBefore; d < 30 {
		t.Errorf("the realtime instances wrote %v live frames after the reconnect, want at least 30", d)
	} else {
		t.Logf("%v live frames after the reconnect", d)
	}
	// The live messages to bob and carol were routed with the killed
	// instance's stale entries still listed beside the new ones.
	for _, r := range faultRecipients[:2] {
		if !holds(r, "inst-c") || !holds(r, "inst-b") {
			t.Errorf("presence of %s at the end: want both the killed instance's stale entry and the live one", r)
		}
	}
	expectNoDeadLetters(t, a.config, a.ops, b.ops, c.ops)
}

// An instance running every role gets SIGTERM while senders post a steady
// stream to it, to recipients connected to it and to offline ones (more
// senders, more sends in flight when the signal comes):
// it exits 0 within shutdown_timeout; its WebSocket clients are closed
// with 1001 (going away); sends during the shutdown are refused (503 or
// connection refused), never answered 202 and lost; once it is back on
// the same data dir, every message answered 202, before or during the
// shutdown, arrives (on reconnect, or fetched by the offline recipients),
// and new messages arrive live; nothing is dead-lettered.
func TestFaultSIGTERMUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	const shutdownTimeout = 10 * time.Second
	cfg := fmt.Sprintf("data_dir: %q\nshutdown_timeout: %s\n", t.TempDir(), shutdownTimeout)
	x := startChildConfig(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cks := make([]*faulttest.Checker, len(faultRecipients))
	for i, r := range faultRecipients {
		cks[i] = faulttest.NewChecker(t, userOn(t, x, "urn:sm:user:alice"), r, 0)
	}
	offline := make([]*faulttest.Checker, 8)
	for i := range offline {
		offline[i] = faulttest.NewChecker(t, userOn(t, x, "urn:sm:user:alice"), fmt.Sprintf("urn:sm:user:offline-%d", i), 0)
	}
	all := append(slices.Clone(cks), offline...)
	ended := connectAll(t, ctx, cks, x)
	sendUntilLive(t, cks)
	stopSending := startSending(t, all, 10*time.Millisecond)
	waitAccepted(t, all, 30, "messages before SIGTERM")

	term := time.Now()
	if err := x.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var exited time.Time
	select {
	case err := <-x.exited:
		exited = time.Now()
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v, want status 0", err)
		}
	case <-time.After(shutdownTimeout):
		t.Fatalf("still running %v after SIGTERM (shutdown_timeout)", shutdownTimeout)
	}
	for i, e := range ended {
		select {
		case err := <-e:
			if s := websocket.CloseStatus(err); s != websocket.StatusGoingAway {
				t.Errorf("%s: connection ended with %v (status %d), want 1001 going away", faultRecipients[i], err, s)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: connection open after the instance exited", faultRecipients[i])
		}
	}
	// What is sent while the instance is down is refused.
	refused := make([]int, len(all))
	for i, ck := range all {
		refused[i] = ck.Count(faulttest.Refused, nil)
	}
	faulttest.WaitFor(t, 10*time.Second, "sends refused while the instance is down", func() bool {
		for i, ck := range all {
			if ck.Count(faulttest.Refused, nil) < refused[i]+3 {
				return false
			}
		}
		return true
	})
	stopSending()
	var acc, ref, failed int
	for _, ck := range all {
		acc += ck.AnsweredBetween(faulttest.Accepted, term, exited)
		ref += ck.AnsweredBetween(faulttest.Refused, term, exited)
		failed += ck.AnsweredBetween(faulttest.Failed, term, exited)
	}
	t.Logf("exited %v after SIGTERM; sends answered meanwhile: %d accepted, %d refused, %d failed without an answer",
		exited.Sub(term).Round(time.Millisecond), acc, ref, failed)

	// Back on the same data dir: the recipients reconnect and get the
	// rest; the offline ones fetch theirs.
	x = startChildConfig(t, cfg)
	for _, ck := range all {
		ck.SetSender(userOn(t, x, "urn:sm:user:alice"))
	}
	connectAll(t, ctx, cks, x)
	for i, ck := range offline {
		if err := ck.FetchAll(ctx, userOn(t, x, fmt.Sprintf("urn:sm:user:offline-%d", i))); err != nil {
			t.Fatalf("fetch offline-%d: %v", i, err)
		}
	}
	faulttest.WaitFor(t, 20*time.Second, "every accepted message after the restart", func() bool {
		for _, ck := range cks {
			if !ck.AllStoredArrived() {
				return false
			}
		}
		return true
	})
	sendUntilLive(t, cks)
	// A send on a keep-alive connection that the server closed as idle
	// just as the request went out fails without an answer (EOF): the
	// server never read it, so it must not arrive either.
	for _, ck := range all {
		ck.Check()
		for n := range ck.Sent() {
			if ck.Outcome(n) == faulttest.Failed && ck.Received(n) {
				t.Errorf("message %d failed without an answer but was delivered: a shutting-down instance accepted it", n)
			}
		}
	}
	expectNoDeadLetters(t, x.config, x.ops)
}

// startSending starts every checker's stream, one send per every; the
// function it returns stops them all and waits for their last sends (once;
// at the end of the test if not before).
func startSending(t *testing.T, cks []*faulttest.Checker, every time.Duration) (stop func()) {
	for _, ck := range cks {
		ck.Start(every)
	}
	stop = sync.OnceFunc(func() {
		for _, ck := range cks {
			ck.StopSending()
		}
	})
	t.Cleanup(stop)
	return stop
}
