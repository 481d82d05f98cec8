package natsbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/bustest"
	"github.com/go-routing-service/routingservice/internal/config"
)

const natsURLEnv = "ROUTING_TEST_NATS_URL"

// uniqueName returns a name no other test of any package shares.
func uniqueName() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}

// testConfig returns a Config on fresh stream names under a fresh subject prefix.
func testConfig(o bustest.Options) Config {
	u := uniqueName()
	return Config{
		SubjectPrefix:             u,
		IngressStream:             u + "-ingress",
		IngressConsumer:           u + "-pipeline",
		DeliveryStream:            u + "-delivery",
		IngressDeadLetterStream:   u + "-ingress-dlq",
		DeliveryDeadLetterStream:  u + "-delivery-dlq",
		MaxDeliveryAttempts:       o.MaxDeliveryAttempts,
		AckDeadline:               o.AckDeadline,
		MinBackoff:                o.MinBackoff,
		MaxBackoff:                o.MaxBackoff,
		MaxOutstanding:            o.MaxOutstanding,
		DuplicateWindow:           time.Minute,
		MaxAge:                    time.Hour,
		DeliveryInactiveThreshold: time.Minute,
		Logger:                    quietLogger,
	}
}

// quietLogger drops the adapter's logs below errors (dead-lettering warns
// on purpose in many tests).
var quietLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

// startEmbedded starts an embedded server in a temporary directory, shut
// down when t ends.
func startEmbedded(t testing.TB) *EmbeddedServer {
	t.Helper()
	s, err := StartEmbedded(t.TempDir(), EmbeddedOptions{})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

func connectEmbedded(t testing.TB, s *EmbeddedServer) *nats.Conn {
	t.Helper()
	nc, err := s.Connect()
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// externalConn connects to the external server named by ROUTING_TEST_NATS_URL
// or skips the test.
func externalConn(t testing.TB) *nats.Conn {
	t.Helper()
	url := os.Getenv(natsURLEnv)
	if url == "" {
		t.Skipf("%s not set; set it (e.g. nats://127.0.0.1:4222) to test against an external NATS server", natsURLEnv)
	}
	nc, err := Connect(url, "")
	if err != nil {
		t.Fatalf("Connect(%s): %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// newTestBus builds a bus on nc with fresh streams; the bus is closed and
// its streams are deleted when t ends.
func newTestBus(t testing.TB, nc *nats.Conn, cfg Config) *Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := New(ctx, nc, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		deleteStreams(t, nc, cfg)
	})
	return b
}

func deleteStreams(t testing.TB, nc *nats.Conn, cfg Config) {
	t.Helper()
	if nc.IsClosed() {
		return
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Errorf("jetstream: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range []string{cfg.IngressStream, cfg.DeliveryStream, cfg.IngressDeadLetterStream, cfg.DeliveryDeadLetterStream} {
		if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("delete stream %s: %v", s, err)
		}
	}
}

func harness(nc func(t *testing.T) *nats.Conn) bustest.Harness {
	return bustest.HarnessFunc(func(t *testing.T, o bustest.Options) bus.Bus {
		return newTestBus(t, nc(t), testConfig(o))
	})
}

func embeddedHarness(t *testing.T) bustest.Harness {
	s := startEmbedded(t)
	conn := connectEmbedded(t, s)
	return harness(func(*testing.T) *nats.Conn { return conn })
}

func externalHarness(t *testing.T) bustest.Harness {
	conn := externalConn(t)
	return harness(func(*testing.T) *nats.Conn { return conn })
}

func TestConformanceEmbedded(t *testing.T) {
	t.Parallel()
	bustest.RunConformanceTests(t, embeddedHarness(t))
}

func TestConformanceExternal(t *testing.T) {
	t.Parallel()
	bustest.RunConformanceTests(t, externalHarness(t))
}

func TestDeadLettersEmbedded(t *testing.T) {
	t.Parallel()
	bustest.RunDeadLetterTests(t, embeddedHarness(t))
}

func TestDeadLettersExternal(t *testing.T) {
	t.Parallel()
	bustest.RunDeadLetterTests(t, externalHarness(t))
}

// engines runs fn against the embedded server and, when configured, the
// external one.
func engines(t *testing.T, fn func(t *testing.T, nc *nats.Conn)) {
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		fn(t, connectEmbedded(t, startEmbedded(t)))
	})
	t.Run("external", func(t *testing.T) {
		t.Parallel()
		fn(t, externalConn(t))
	})
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

// TestAckTimeoutDeadLetters covers the advisory path: a message whose
// handler never settles it is dead-lettered once its deliveries run out,
// and the late handler result does not store a second copy.
func TestAckTimeoutDeadLetters(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, nc *nats.Conn) {
		cfg := testConfig(bustest.Options{MaxDeliveryAttempts: 3, AckDeadline: 300 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxOutstanding: 8})
		b := newTestBus(t, nc, cfg)
		release := make(chan struct{})
		var calls atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			done <- b.ReceiveIngress(ctx, func(hctx context.Context, m *bus.Message) error {
				calls.Add(1)
				<-release
				return errors.New("gave up late")
			})
		}()
		pctx, pcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer pcancel()
		if err := b.PublishIngress(pctx, &bus.Message{ID: "stuck", Data: []byte("x"), Attributes: map[string]string{"a": "1"}}); err != nil {
			t.Fatal(err)
		}
		var dead []bus.DeadMessage
		waitUntil(t, "the expired message in the dead-letter queue", 15*time.Second, func() bool {
			var err error
			dead, err = b.ListDead(pctx, bus.QueueIngress, 10)
			return err == nil && len(dead) > 0
		})
		d := dead[0]
		if d.Message.ID != "stuck" || string(d.Message.Data) != "x" || d.Message.Attributes["a"] != "1" {
			t.Errorf("dead message %+v, want the original", d.Message)
		}
		if d.Attempts != 3 || !strings.Contains(d.Reason, "ack deadline") {
			t.Errorf("dead message attempts %d reason %q, want 3 and an ack deadline reason", d.Attempts, d.Reason)
		}
		if got := calls.Load(); got != 3 {
			t.Errorf("handler called %d times, want 3", got)
		}
		// The late results (the last one dead-letters again) are settled
		// before ReceiveIngress returns; the copy is deduplicated.
		close(release)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ReceiveIngress: %v", err)
		}
		dead, err := b.ListDead(pctx, bus.QueueIngress, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) != 1 {
			t.Errorf("dead-letter queue holds %d messages after the late handler results, want 1", len(dead))
		}
	})
}

// TestRestartKeepsMessages publishes on an embedded server, restarts it on
// the same directory, and receives the message.
func TestRestartKeepsMessages(t *testing.T) {
	t.Parallel()
	for _, o := range []EmbeddedOptions{{SyncAlways: true}, {SyncInterval: time.Second}} {
		t.Run(fmt.Sprintf("sync_always=%v", o.SyncAlways), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cfg := testConfig(bustest.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			s1, err := StartEmbedded(dir, o)
			if err != nil {
				t.Fatal(err)
			}
			nc1, err := s1.Connect()
			if err != nil {
				t.Fatal(err)
			}
			b1, err := New(ctx, nc1, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := b1.PublishIngress(ctx, &bus.Message{ID: "survivor", Data: []byte("durable"), Attributes: map[string]string{"k": "v"}}); err != nil {
				t.Fatal(err)
			}
			if err := b1.Close(); err != nil {
				t.Fatal(err)
			}
			nc1.Close()
			if err := s1.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}

			s2, err := StartEmbedded(dir, o)
			if err != nil {
				t.Fatalf("restart: %v", err)
			}
			defer func() {
				if err := s2.Shutdown(ctx); err != nil {
					t.Error(err)
				}
			}()
			nc2, err := s2.Connect()
			if err != nil {
				t.Fatal(err)
			}
			defer nc2.Close()
			b2, err := New(ctx, nc2, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b2.Close()
			got := make(chan *bus.Message, 1)
			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- b2.ReceiveIngress(rctx, func(_ context.Context, m *bus.Message) error {
					select {
					case got <- m:
					default:
					}
					return nil
				})
			}()
			select {
			case m := <-got:
				if m.ID != "survivor" || string(m.Data) != "durable" || m.Attributes["k"] != "v" {
					t.Errorf("after restart received %+v", m)
				}
			case <-ctx.Done():
				t.Fatal("message published before the restart not received after it")
			}
			rcancel()
			if err := <-done; err != nil {
				t.Errorf("ReceiveIngress: %v", err)
			}
		})
	}
}

// TestNewUpdatesAndVerifiesStreams checks that New updates settings that
// differ and refuses a stream whose retention it cannot change.
func TestNewUpdatesAndVerifiesStreams(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, nc *nats.Conn) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cfg := testConfig(bustest.Options{})
		newTestBus(t, nc, cfg)

		cfg2 := cfg
		cfg2.DuplicateWindow = 90 * time.Second
		cfg2.MaxAge = 2 * time.Hour
		cfg2.AckDeadline = 45 * time.Second
		cfg2.MaxDeliveryAttempts = 7
		b2, err := New(ctx, nc, cfg2)
		if err != nil {
			t.Fatalf("New with changed settings: %v", err)
		}
		defer b2.Close()
		js, _ := jetstream.New(nc)
		s, err := js.Stream(ctx, cfg.IngressStream)
		if err != nil {
			t.Fatal(err)
		}
		if c := s.CachedInfo().Config; c.Duplicates != 90*time.Second || c.MaxAge != 2*time.Hour {
			t.Errorf("stream not updated: duplicates %v max age %v", c.Duplicates, c.MaxAge)
		}
		ci, err := js.Consumer(ctx, cfg.IngressStream, cfg.IngressConsumer)
		if err != nil {
			t.Fatal(err)
		}
		if c := ci.CachedInfo().Config; c.AckWait != 45*time.Second || c.MaxDeliver != 7 {
			t.Errorf("consumer not updated: ack wait %v max deliver %d", c.AckWait, c.MaxDeliver)
		}

		bad := testConfig(bustest.Options{})
		t.Cleanup(func() { deleteStreams(t, nc, bad) })
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bad.IngressStream, Subjects: []string{bad.SubjectPrefix + ".ingress"}}); err != nil {
			t.Fatal(err)
		}
		if b, err := New(ctx, nc, bad); err == nil {
			b.Close()
			t.Fatal("New accepted an ingress stream with limits retention")
		} else if !strings.Contains(err.Error(), "retention") {
			t.Errorf("New error %q does not name the retention", err)
		}
	})
}

// TestInvalidInput checks the errors for bad names, ids, ordering keys and
// attributes.
func TestInvalidInput(t *testing.T) {
	t.Parallel()
	s := startEmbedded(t)
	nc := connectEmbedded(t, s)
	b := newTestBus(t, nc, testConfig(bustest.Options{}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cases := map[string]error{
		"empty id":          b.PublishIngress(ctx, &bus.Message{Data: []byte("x")}),
		"id with newline":   b.PublishIngress(ctx, &bus.Message{ID: "a\nb"}),
		"reserved attr":     b.PublishIngress(ctx, &bus.Message{ID: "a", Attributes: map[string]string{"Nats-Msg-Id": "x"}}),
		"attr with newline": b.PublishIngress(ctx, &bus.Message{ID: "a", Attributes: map[string]string{"k": "a\r\nb"}}),
		"key with newline":  b.PublishIngress(ctx, &bus.Message{ID: "a", OrderingKey: "urn:x\nRouting-Evil: 1"}),
		"attr as key":       b.PublishIngress(ctx, &bus.Message{ID: "a", Attributes: map[string]string{hdrOrderingKey: "k"}}),
		"bad instance":      b.PublishDelivery(ctx, "a.b", &bus.Message{ID: "a"}),
		"receive bad inst":  b.ReceiveDelivery(ctx, "*", func(context.Context, *bus.Message) error { return nil }),
	}
	for name, err := range cases {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := New(ctx, nc, Config{IngressStream: "bad.name"}); err == nil {
		t.Error("New accepted an invalid config")
	}
}

func TestFromConfig(t *testing.T) {
	t.Parallel()
	c := config.Default().Bus
	got := FromConfig(c)
	if got.IngressStream != c.IngressTopic || got.IngressConsumer != c.IngressSubscription || got.DeliveryStream != c.DeliveryTopic ||
		got.IngressDeadLetterStream != c.IngressDeadLetterTopic || got.DeliveryDeadLetterStream != c.DeliveryDeadLetterTopic ||
		got.MaxDeliveryAttempts != c.MaxDeliveryAttempts || got.AckDeadline != c.AckDeadline || got.MinBackoff != c.MinBackoff ||
		got.MaxBackoff != c.MaxBackoff || got.MaxOutstanding != c.MaxOutstanding || got.Replicas != c.NATS.Replicas ||
		got.DuplicateWindow != c.NATS.DuplicateWindow || got.MaxAge != c.NATS.MaxAge {
		t.Errorf("FromConfig(%+v) = %+v", c, got)
	}
	// The defaults make a working bus.
	s := startEmbedded(t)
	nc := connectEmbedded(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := New(ctx, nc, got)
	if err != nil {
		t.Fatalf("New(FromConfig(defaults)): %v", err)
	}
	defer b.Close()
	if err := b.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	b := &Bus{cfg: Config{MinBackoff: time.Second, MaxBackoff: 10 * time.Second}}
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 60: 10 * time.Second} {
		if got := b.backoff(attempt); got != want {
			t.Errorf("backoff(%d) = %v, want %v", attempt, got, want)
		}
	}
}

func TestConnectErrors(t *testing.T) {
	t.Parallel()
	if _, err := Connect("", ""); err == nil {
		t.Error("Connect(\"\") succeeded")
	}
	_, err := Connect("nats://user:secret@127.0.0.1:1", "")
	if err == nil {
		t.Fatal("Connect to a closed port succeeded")
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("Connect error leaks the password: %v", err)
	}
	if url := os.Getenv(natsURLEnv); url != "" {
		if _, err := Connect(url, "/nonexistent/creds"); err == nil {
			t.Error("Connect with a missing credentials file succeeded")
		}
	}
}

// BenchmarkIngressEmbedded publishes 256-byte messages to the ingress
// stream of an embedded server from concurrent publishers while one
// receiver handles them, and reports the rate.
func BenchmarkIngressEmbedded(b *testing.B) {
	for _, always := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync_always=%v", always), func(b *testing.B) {
			s, err := StartEmbedded(b.TempDir(), EmbeddedOptions{SyncAlways: always})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = s.Shutdown(context.Background()) })
			nc := connectEmbedded(b, s)
			bs := newTestBus(b, nc, testConfig(bustest.Options{MaxOutstanding: 1000}))
			benchIngress(b, bs)
		})
	}
}

func benchIngress(b *testing.B, bs *Bus) {
	const publishers = 64
	var received atomic.Int64
	all := make(chan struct{})
	total := int64(b.N)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- bs.ReceiveIngress(ctx, func(context.Context, *bus.Message) error {
			if received.Add(1) == total {
				close(all)
			}
			return nil
		})
	}()
	data := make([]byte, 256)
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range publishers {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > total {
					return
				}
				if err := bs.PublishIngress(ctx, &bus.Message{ID: "m" + fmt.Sprint(i), Data: data}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(time.Minute):
		b.Fatalf("received %d of %d", received.Load(), total)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	cancel()
	if err := <-done; err != nil {
		b.Error(err)
	}
}

// TestPrepareDeliveryKeepsEarlyEvents checks that events published after
// PrepareDelivery and before ReceiveDelivery are received.
func TestPrepareDeliveryKeepsEarlyEvents(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, nc *nats.Conn) {
		b := newTestBus(t, nc, testConfig(bustest.Options{}))
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := b.PrepareDelivery(ctx, "early-bird"); err != nil {
			t.Fatalf("PrepareDelivery: %v", err)
		}
		if err := b.PublishDelivery(ctx, "early-bird", &bus.Message{ID: "e1", Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- b.ReceiveDelivery(rctx, "early-bird", func(_ context.Context, m *bus.Message) error {
				got <- m.ID
				return nil
			})
		}()
		select {
		case id := <-got:
			if id != "e1" {
				t.Errorf("received %s, want e1", id)
			}
		case <-ctx.Done():
			t.Fatal("event published after PrepareDelivery not received")
		}
		rcancel()
		if err := <-done; err != nil {
			t.Errorf("ReceiveDelivery: %v", err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.PrepareDelivery(ctx, "x"); !errors.Is(err, bus.ErrClosed) {
			t.Errorf("PrepareDelivery after Close returned %v, want bus.ErrClosed", err)
		}
	})
}

// TestVanishedInstanceConsumerExpires checks that the server deletes the
// delivery consumer of an instance that stopped pulling.
func TestVanishedInstanceConsumerExpires(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, nc *nats.Conn) {
		cfg := testConfig(bustest.Options{})
		cfg.DeliveryInactiveThreshold = time.Second
		b := newTestBus(t, nc, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.PrepareDelivery(ctx, "gone"); err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		name := "instance-gone" // the default DeliveryConsumerPrefix and the instance
		if _, err := js.Consumer(ctx, cfg.DeliveryStream, name); err != nil {
			t.Fatalf("consumer %s not created: %v", name, err)
		}
		waitUntil(t, "the inactive consumer to be deleted", 15*time.Second, func() bool {
			_, err := js.Consumer(ctx, cfg.DeliveryStream, name)
			return errors.Is(err, jetstream.ErrConsumerNotFound)
		})
	})
}

func TestBatchesEmbedded(t *testing.T) {
	t.Parallel()
	bustest.RunBatchTests(t, embeddedHarness(t))
}

func TestBatchesExternal(t *testing.T) {
	t.Parallel()
	bustest.RunBatchTests(t, externalHarness(t))
}
