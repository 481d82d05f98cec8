package app_test

import (
	"context"
	"fmt"
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
// consumer ("" when it has none or the cluster does not answer).
func leader(js jetstream.JetStream, stream, consumer string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if consumer != "" {
		c, err := js.Consumer(ctx, stream, consumer)
		if err != nil || c.CachedInfo().Cluster == nil {
			return ""
		}
		return c.CachedInfo().Cluster.Leader
	}
	s, err := js.Stream(ctx, stream)
	if err != nil || s.CachedInfo().Cluster == nil {
		return ""
	}
	return s.CachedInfo().Cluster.Leader
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

// A 3-node JetStream cluster, streams with 3 replicas, a steady stream
// from an api+pipeline instance to a recipient on a realtime instance:
// the node leading the delivery stream is killed (SIGKILL) and restarted.
// Nothing is lost, nothing dead-lettered, and live delivery is back
// within seconds of the kill (the streams elect a leader among the two
// left), not after pipeline.reroute_after.
func TestRecoveryClusterLeaderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster")
	}
	cl := startNATSCluster(t, 3)
	apps, ck := senderAndRealtimeOn(t, cl.URL(), 3)

	lat := &latencies{sent: map[int]time.Time{}, arrived: map[int]time.Time{}}
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
	stopLoops := sync.OnceFunc(func() { close(stop); loops.Wait() })
	t.Cleanup(stopLoops)

	faulttest.WaitFor(t, 10*time.Second, "messages before the kill", func() bool { return ck.Count(faulttest.Accepted, nil) >= 50 })
	const stream, consumer = "recovery-delivery", "recovery-instance-rec-realtime"
	victim := leader(jsOn(t, cl.nodes[0]), stream, "")
	if victim == "" {
		t.Fatal("the delivery stream has no leader before the kill")
	}
	node := cl.node(t, victim)
	// Watch the election from a node that stays.
	var js jetstream.JetStream
	for i, n := range cl.names {
		if n != victim {
			js = jsOn(t, cl.nodes[i])
			break
		}
	}
	consumerLeader := leader(js, stream, consumer)
	node.Kill()
	killed, from := time.Now(), ck.Sent()
	// The cluster has leaders again once the delivery stream and this
	// realtime instance's consumer have one among the nodes left.
	var elected time.Time
	faulttest.WaitFor(t, 30*time.Second, "a new delivery stream and consumer leader", func() bool {
		ls, lc := leader(js, stream, ""), leader(js, stream, consumer)
		if ls != "" && ls != victim && lc != "" && lc != victim {
			elected = time.Now()
			return true
		}
		return false
	})
	faulttest.WaitFor(t, 20*time.Second, "messages while the node is down", func() bool { return ck.Sent()-from >= 150 })
	node.Start()
	restarted := time.Now()
	faulttest.WaitFor(t, 20*time.Second, "messages after the restart", func() bool { return ck.Sent()-from >= 300 })
	stopLoops()

	faulttest.WaitFor(t, 30*time.Second, "every accepted message", ck.AllStoredArrived)
	ck.Check()
	for _, ta := range apps {
		if n := deadLettered(ta); n != 0 {
			t.Errorf("%v messages dead-lettered by a node's death", n)
		}
	}
	// How late the messages sent after the kill arrived.
	lat.mu.Lock()
	defer lat.mu.Unlock()
	var worst time.Duration
	worstAt := -1
	var lastLate time.Time // when the last message that arrived more than 1 s late arrived
	for n, at := range lat.sent {
		if n < from || ck.Outcome(n) != faulttest.Accepted {
			continue
		}
		got, ok := lat.arrived[n]
		if !ok {
			continue // arrived after the loops stopped: AllStoredArrived saw it
		}
		if d := got.Sub(at); d > worst {
			worst, worstAt = d, n
		}
		if got.Sub(at) > time.Second && got.After(lastLate) {
			lastLate = got
		}
	}
	t.Logf("killed %s (delivery stream leader; its consumer's was %s); leaders again after %v; restarted after %v; worst delivery %v (message %d); delays over 1s ended %v after the kill",
		victim, consumerLeader, elected.Sub(killed).Round(time.Millisecond), restarted.Sub(killed).Round(time.Millisecond), worst.Round(time.Millisecond), worstAt,
		lastLate.Sub(killed).Round(time.Millisecond))
	if !lastLate.IsZero() && lastLate.Sub(elected) > 2*time.Second {
		t.Errorf("live delivery came back %v after the delivery stream had a new leader, want within 2s", lastLate.Sub(elected).Round(time.Millisecond))
	}
}
