package app_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/faulttest"
)

// natsCluster is a private JetStream cluster of nats-server processes on
// loopback ports.
type natsCluster struct {
	nodes []*server
	names []string
}

// startNATSCluster starts n nats-server processes clustered with
// JetStream (server names n1, n2, ...), each with its own store.
func startNATSCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	ports, cports := make([]int, n), make([]int, n)
	for i := range n {
		ports[i], cports[i] = freePort(t), freePort(t)
	}
	var routes []string
	for _, p := range cports {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	c := &natsCluster{}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		s := privateServer(t, "nats-server", ports[i], "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(ports[i]), "-sd", t.TempDir(),
			"-n", name, "--cluster_name", "recovery", "--cluster", "nats://127.0.0.1:"+strconv.Itoa(cports[i]),
			"--routes", strings.Join(routes, ","))
		c.nodes, c.names = append(c.nodes, s), append(c.names, name)
	}
	for _, s := range c.nodes {
		s.Start()
	}
	return c
}

// URL lists every node.
func (c *natsCluster) URL() string {
	var us []string
	for _, s := range c.nodes {
		us = append(us, "nats://"+s.Addr())
	}
	return strings.Join(us, ",")
}

// node returns the node called name.
func (c *natsCluster) node(t *testing.T, name string) *server {
	t.Helper()
	for i, n := range c.names {
		if n == name {
			return c.nodes[i]
		}
	}
	t.Fatalf("no node %q in the cluster", name)
	return nil
}

// leader returns the server leading stream, or with a consumer name that
// consumer, with a quorum of its replicas ("" when it has none, it hears
// from too few replicas, or the cluster does not answer).
func leader(js jetstream.JetStream, stream, consumer string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var ci *jetstream.ClusterInfo
	if consumer != "" {
		c, err := js.Consumer(ctx, stream, consumer)
		if err != nil {
			return ""
		}
		ci = c.CachedInfo().Cluster
	} else {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return ""
		}
		ci = s.CachedInfo().Cluster
	}
	if ci == nil || ci.Leader == "" {
		return ""
	}
	alive := 1
	for _, p := range ci.Replicas {
		if p != nil && !p.Offline && p.Active < 3*time.Second {
			alive++
		}
	}
	if alive < 2 {
		return "" // a leader alone of 3
	}
	return ci.Leader
}

// jsOn connects to one node only and returns its JetStream context.
func jsOn(t *testing.T, s *server) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect("nats://"+s.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// latencies records when each message of a checker was sent and when it
// first arrived.
type latencies struct {
	mu      sync.Mutex
	sent    map[int]time.Time
	arrived map[int]time.Time
}

// lateSince returns, of the messages numbered from on that were accepted
// and arrived, the worst delay between send and arrival, and when the
// last one delayed by more than a second arrived (zero when none was).
func (l *latencies) lateSince(ck *faulttest.Checker, from int) (worst time.Duration, lastLate time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for n, at := range l.sent {
		if n < from || ck.Outcome(n) != faulttest.Accepted {
			continue
		}
		got, ok := l.arrived[n]
		if !ok {
			continue // arrived after the loops stopped: AllStoredArrived sees it
		}
		d := got.Sub(at)
		worst = max(worst, d)
		if d > time.Second && got.After(lastLate) {
			lastLate = got
		}
	}
	return worst, lastLate
}

// lastArrival waits (up to limit) until every message numbered [from, to)
// that was accepted has arrived and its arrival is recorded, and returns
// when the last of them arrived.
func (l *latencies) lastArrival(t *testing.T, ck *faulttest.Checker, from, to int, limit time.Duration) time.Time {
	t.Helper()
	var last time.Time
	faulttest.WaitFor(t, limit, fmt.Sprintf("messages %d-%d delivered", from, to-1), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		last = time.Time{}
		for n := from; n < to; n++ {
			if ck.Outcome(n) != faulttest.Accepted {
				continue
			}
			at, ok := l.arrived[n]
			if !ok {
				return false
			}
			if at.After(last) {
				last = at
			}
		}
		return true
	})
	return last
}

// unready records the /readyz answers other than 200 of some instances.
type unready struct {
	mu  sync.Mutex
	got []string
}

func (u *unready) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	got := u.got
	u.got = nil
	return got
}

// A 3-node JetStream cluster, streams with 3 replicas, a steady stream of
// 50 messages a second from an api+pipeline instance to a recipient on a
// realtime instance. First the node leading the delivery stream is killed
// (SIGKILL) and restarted: no instance says it is not ready (it rides the
// election through), and live delivery is back as soon as the streams
// have leaders among the two nodes left. Then two nodes are killed
// (quorum lost): both instances say they are not ready, naming the bus;
// once the nodes are back, the messages accepted meanwhile arrive within
// 2 s of the streams having leaders again, and the instances are ready.
// Nothing is lost, nothing dead-lettered, none waits for
// pipeline.reroute_after.
func TestRecoveryClusterLeaderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster")
	}
	cl := startNATSCluster(t, 3)
	apps, ck := senderAndRealtimeOn(t, cl.URL(), 3)

	lat := &latencies{sent: map[int]time.Time{}, arrived: map[int]time.Time{}}
	notReady := &unready{}
	stop := make(chan struct{})
	var loops sync.WaitGroup
	loops.Go(func() { // the steady stream: 50 messages a second
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			n, at := ck.Sent(), time.Now()
			lat.mu.Lock()
			lat.sent[n] = at
			lat.mu.Unlock()
			ck.SendOne()
		}
	})
	loops.Go(func() { // arrival times, to 5 ms
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			lat.mu.Lock()
			for n := range lat.sent {
				if _, ok := lat.arrived[n]; !ok && ck.Received(n) {
					lat.arrived[n] = time.Now()
				}
			}
			lat.mu.Unlock()
		}
	})
	loops.Go(func() { // readiness, every 100 ms
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			for _, ta := range apps {
				if code, checks := readyz(t, ta); code != http.StatusOK {
					notReady.mu.Lock()
					notReady.got = append(notReady.got, fmt.Sprintf("%s %d %v at %s", ta.cfg.InstanceID, code, checks, time.Now().Format("15:04:05.000")))
					notReady.mu.Unlock()
				}
			}
		}
	})
	stopLoops := sync.OnceFunc(func() { close(stop); loops.Wait() })
	t.Cleanup(stopLoops)

	faulttest.WaitFor(t, 10*time.Second, "messages before the kill", func() bool { return ck.Count(faulttest.Accepted, nil) >= 50 })
	faulttest.WaitFor(t, 10*time.Second, "every instance ready", func() bool {
		for _, ta := range apps {
			if code, _ := readyz(t, ta); code != http.StatusOK {
				return false
			}
		}
		return true
	})
	notReady.take()
	const stream, consumer = "recovery-delivery", "recovery-instance-rec-realtime"
	victim := leader(jsOn(t, cl.nodes[0]), stream, "")
	if victim == "" {
		t.Fatal("the delivery stream has no leader before the kill")
	}
	// Watch the elections from a node that stays up throughout.
	var js jetstream.JetStream
	var others []*server
	for i, n := range cl.names {
		if n != victim {
			others = append(others, cl.nodes[i])
		}
	}
	js = jsOn(t, others[0])
	// leadersAgain waits until the delivery stream and this realtime
	// instance's consumer have a leader among the nodes up.
	leadersAgain := func(what string, down ...string) time.Time {
		t.Helper()
		var at time.Time
		faulttest.WaitFor(t, 30*time.Second, what, func() bool {
			ls, lc := leader(js, stream, ""), leader(js, stream, consumer)
			if ls == "" || lc == "" || slices.Contains(down, ls) || slices.Contains(down, lc) {
				return false
			}
			at = time.Now()
			return true
		})
		return at
	}

	// One node: the delivery stream's leader.
	consumerLeader := leader(js, stream, consumer)
	node := cl.node(t, victim)
	node.Kill()
	killed, from := time.Now(), ck.Sent()
	elected := leadersAgain("a new delivery stream and consumer leader", victim)
	faulttest.WaitFor(t, 20*time.Second, "messages while the node is down", func() bool { return ck.Sent()-from >= 150 })
	node.Start()
	restarted, upTo := time.Now(), ck.Sent()
	// Every message sent while the node was down arrives, the last within
	// 2 s of the streams having leaders again.
	last := lat.lastArrival(t, ck, from, upTo, 20*time.Second)
	worst, _ := lat.lateSince(ck, from)
	t.Logf("one node: killed %s (delivery stream leader; its consumer's was %s); leaders again after %v; restarted after %v; worst delivery %v; the last message sent while it was down arrived %v after the leaders were back",
		victim, consumerLeader, elected.Sub(killed).Round(time.Millisecond), restarted.Sub(killed).Round(time.Millisecond), worst.Round(time.Millisecond),
		last.Sub(elected).Round(time.Millisecond))
	if last.Sub(elected) > 2*time.Second {
		t.Errorf("one node: live delivery came back %v after the streams had leaders again, want within 2s", last.Sub(elected).Round(time.Millisecond))
	}
	if got := notReady.take(); len(got) > 0 {
		t.Errorf("one node's failover took instances out of readiness: %v", got)
	}

	// Two nodes: quorum lost.
	down := []*server{node, others[1]}
	for _, n := range down {
		n.Kill()
	}
	lost, from2 := time.Now(), ck.Sent()
	for _, ta := range apps {
		faulttest.WaitFor(t, 20*time.Second, ta.cfg.InstanceID+" not ready without quorum", func() bool {
			code, checks := readyz(t, ta)
			return code == http.StatusServiceUnavailable && checks["bus"] == "fail"
		})
	}
	unreadyAfter := time.Since(lost)
	for _, n := range down {
		n.Start()
	}
	back, upTo2 := time.Now(), ck.Sent()
	elected2 := leadersAgain("the delivery stream and consumer leaders after quorum returns")
	last2 := lat.lastArrival(t, ck, from2, upTo2, 20*time.Second)
	for _, ta := range apps {
		faulttest.WaitFor(t, 20*time.Second, ta.cfg.InstanceID+" ready again", func() bool {
			code, _ := readyz(t, ta)
			return code == http.StatusOK
		})
	}
	mark := ck.Sent()
	faulttest.WaitFor(t, 20*time.Second, "messages after quorum returns", func() bool { return ck.Sent()-mark >= 100 })
	stopLoops()
	worst2, _ := lat.lateSince(ck, from2)
	t.Logf("quorum lost: both instances not ready %v after; nodes back after %v; leaders again %v after that; worst delivery %v; the last message sent without quorum arrived %v after the leaders were back",
		unreadyAfter.Round(time.Millisecond), back.Sub(lost).Round(time.Millisecond), elected2.Sub(back).Round(time.Millisecond), worst2.Round(time.Millisecond),
		last2.Sub(elected2).Round(time.Millisecond))
	if last2.Sub(elected2) > 2*time.Second {
		t.Errorf("quorum lost: live delivery came back %v after the streams had leaders again, want within 2s", last2.Sub(elected2).Round(time.Millisecond))
	}

	faulttest.WaitFor(t, 30*time.Second, "every accepted message", ck.AllStoredArrived)
	ck.Check()
	for _, ta := range apps {
		if n := deadLettered(ta); n != 0 {
			t.Errorf("%v messages dead-lettered by nodes' deaths", n)
		}
	}
}
