package natsbus

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// A publish whose acknowledgement never comes (a stream leader that died
// holding it) fails with ErrAckTimeout after Config.PublishAckTimeout,
// not after the caller's much longer deadline. Here the ingress stream
// is gone and a plain subscriber swallows what is published on its
// subject without answering.
func TestPublishAckTimeout(t *testing.T) {
	t.Parallel()
	s := startEmbedded(t)
	nc := connectEmbedded(t, s)
	cfg := Config{SubjectPrefix: uniqueName(), PublishAckTimeout: 300 * time.Millisecond, Logger: quietLogger}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := New(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, cfg.SubjectPrefix+"-ingress"); err != nil {
		t.Fatal(err)
	}
	sub, err := nc.SubscribeSync(cfg.SubjectPrefix + ".ingress")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 3} {
		ms := make([]*driver.Message, n)
		for i := range ms {
			ms[i] = &driver.Message{ID: uniqueName(), DedupID: uniqueName(), Data: []byte("x")}
		}
		start := time.Now()
		err := d.Publish(ctx, driver.QueueIngress, ms)
		took := time.Since(start)
		if !errors.Is(err, ErrAckTimeout) {
			t.Fatalf("publish of %d without acknowledgement: %v, want ErrAckTimeout", n, err)
		}
		if took < 300*time.Millisecond || took > 5*time.Second {
			t.Errorf("publish of %d failed after %v, want about the 300ms ack timeout", n, took)
		}
	}
}

// A replicated stream is unfit for publishing without a leader, or with
// a leader that hears from too few replicas for a quorum; a leader with
// one live follower of two, or a stream of one replica, is fit.
func TestLeaderless(t *testing.T) {
	peer := func(name string, active time.Duration) *jetstream.PeerInfo {
		return &jetstream.PeerInfo{Name: name, Current: active < time.Second, Active: active}
	}
	info := func(replicas int, cl *jetstream.ClusterInfo) *jetstream.StreamInfo {
		return &jetstream.StreamInfo{Config: jetstream.StreamConfig{Name: "s", Replicas: replicas}, Cluster: cl}
	}
	cases := []struct {
		name string
		info *jetstream.StreamInfo
		fit  bool
	}{
		{"one replica, no cluster", info(1, nil), true},
		{"three, all current", info(3, &jetstream.ClusterInfo{Leader: "a", Replicas: []*jetstream.PeerInfo{peer("b", 200*time.Millisecond), peer("c", 900*time.Millisecond)}}), true},
		{"three, one follower gone", info(3, &jetstream.ClusterInfo{Leader: "a", Replicas: []*jetstream.PeerInfo{peer("b", 200*time.Millisecond), peer("c", 20*time.Second)}}), true},
		{"three, both followers gone", info(3, &jetstream.ClusterInfo{Leader: "a", Replicas: []*jetstream.PeerInfo{peer("b", 8*time.Second), peer("c", 20*time.Second)}}), false},
		{"three, one offline one silent", info(3, &jetstream.ClusterInfo{Leader: "a", Replicas: []*jetstream.PeerInfo{{Name: "b", Offline: true}, peer("c", 4*time.Second)}}), false},
		{"three, no leader", info(3, &jetstream.ClusterInfo{Replicas: []*jetstream.PeerInfo{peer("a", 0), peer("b", 0), peer("c", 0)}}), false},
		{"three, no cluster info", info(3, nil), false},
	}
	for _, c := range cases {
		err := leaderless(c.info)
		if (err == nil) != c.fit {
			t.Errorf("%s: leaderless = %v, want fit %v", c.name, err, c.fit)
		}
		if err != nil && !strings.Contains(err.Error(), "stream s") {
			t.Errorf("%s: %v does not name the stream", c.name, err)
		}
	}
}
