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
	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/bus/drivertest"
)

const natsURLEnv = "ROUTING_TEST_NATS_URL"

// uniqueName returns a name no other test of any package shares.
func uniqueName() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}

// testConfig returns a Config under a fresh subject prefix, so on fresh
// streams and consumers.
func testConfig(o bustest.Options) Config {
	return Config{
		SubjectPrefix:             uniqueName(),
		MaxDeliveryAttempts:       o.MaxDeliveryAttempts,
		AckDeadline:               o.AckDeadline,
		Prefetch:                  max(1, o.MaxOutstanding/2),
		DuplicateWindow:           time.Minute,
		MaxAge:                    time.Hour,
		DeliveryInactiveThreshold: time.Minute,
		Logger:                    quietLogger,
	}
}

// quietLogger drops the logs below errors (dead-lettering warns on purpose
// in many tests).
var quietLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

// busOptions is the delivery policy of o.
func busOptions(o bustest.Options) bus.Options {
	return bus.Options{
		MaxDeliveryAttempts: o.MaxDeliveryAttempts,
		MinBackoff:          o.MinBackoff,
		MaxBackoff:          o.MaxBackoff,
		MaxOutstanding:      o.MaxOutstanding,
		Logger:              quietLogger,
	}
}

// startEmbedded starts an embedded server in a temporary directory, shut
// down when t ends.
func startEmbedded(t testing.TB) *EmbeddedServer {
	t.Helper()
	s, err := StartEmbedded(t.TempDir(), EmbeddedOptions{Logger: quietLogger})
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

// newTestDriver builds a driver on nc with fresh streams; it is closed and
// its streams are deleted when t ends.
func newTestDriver(t testing.TB, nc *nats.Conn, cfg Config) *Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := New(ctx, nc, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		deleteStreams(t, nc, cfg.SubjectPrefix)
	})
	return d
}

// newTestBus is the portable bus over a new driver, closed when t ends.
func newTestBus(t testing.TB, nc *nats.Conn, o bustest.Options) *bus.Bus {
	t.Helper()
	b := bus.New(newTestDriver(t, nc, testConfig(o)), busOptions(o))
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func deleteStreams(t testing.TB, nc *nats.Conn, prefix string) {
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
	for _, s := range []string{prefix + "-ingress", prefix + "-delivery", prefix + "-ingress-dlq", prefix + "-delivery-dlq"} {
		if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("delete stream %s: %v", s, err)
		}
	}
}

// harness makes drivers on one connection.
type harness struct{ nc *nats.Conn }

func (h harness) MakeDriver(t *testing.T, o bustest.Options) driver.Driver {
	return newTestDriver(t, h.nc, testConfig(o))
}

func (h harness) MakeTestDriver(t *testing.T, o drivertest.Options) driver.Driver {
	cfg := testConfig(bustest.Options{AckDeadline: o.AckDeadline, MaxDeliveryAttempts: o.MaxDeliveryAttempts})
	return newTestDriver(t, h.nc, cfg)
}

// Unkept: NATS keeps every promise of the driver suite.
func (harness) Unkept(drivertest.Promise) string { return "" }

func embeddedHarness(t *testing.T) harness {
	return harness{connectEmbedded(t, startEmbedded(t))}
}

func externalHarness(t *testing.T) harness {
	return harness{externalConn(t)}
}

func TestDriverEmbedded(t *testing.T) {
	t.Parallel()
	drivertest.RunDriverTests(t, embeddedHarness(t))
}

func TestDriverExternal(t *testing.T) {
	t.Parallel()
	drivertest.RunDriverTests(t, externalHarness(t))
}

func TestConformanceEmbedded(t *testing.T) {
	t.Parallel()
	bustest.RunConformanceTests(t, embeddedHarness(t))
}

func TestConformanceExternal(t *testing.T) {
	t.Parallel()
	bustest.RunConformanceTests(t, externalHarness(t))
}

func TestTracesEmbedded(t *testing.T) {
	t.Parallel()
	bustest.RunTraceTests(t, embeddedHarness(t))
}

func TestTracesExternal(t *testing.T) {
	t.Parallel()
	bustest.RunTraceTests(t, externalHarness(t))
}

func TestPacksEmbedded(t *testing.T) {
	t.Parallel()
	bustest.RunPackTests(t, embeddedHarness(t))
}

func TestPacksExternal(t *testing.T) {
	t.Parallel()
	bustest.RunPackTests(t, externalHarness(t))
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
		b := newTestBus(t, nc, bustest.Options{MaxDeliveryAttempts: 3, AckDeadline: 300 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxOutstanding: 8})
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
		if d.Attempts != 3 || !strings.Contains(d.Reason, "without being settled") {
			t.Errorf("dead message attempts %d reason %q, want 3 and a reason that says it was never settled", d.Attempts, d.Reason)
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

// TestEmbeddedServerLogs checks that the embedded server's log reaches the
// configured logger, its notices at Debug.
func TestEmbeddedServerLogs(t *testing.T) {
	t.Parallel()
	ready := &countingHandler{level: slog.LevelDebug, msg: "Server is ready"}
	s, err := StartEmbedded(t.TempDir(), EmbeddedOptions{Logger: slog.New(ready)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := ready.n.Load(); n != 1 {
		t.Errorf("the server's %q notice reached the logger at Debug %d times, want 1", ready.msg, n)
	}
}

// TestNewRightAfterLastStreamsDeleted creates a deployment's streams on an
// embedded server just after the server deleted every other stream, over
// and over: the deletion removes the emptied streams directory in a
// goroutine of the server's own, which now and then breaks the next
// stream's store ("error creating store for stream"), and New must ask
// again rather than fail.
func TestNewRightAfterLastStreamsDeleted(t *testing.T) {
	t.Parallel()
	nc := connectEmbedded(t, startEmbedded(t))
	retries := &countingHandler{level: slog.LevelWarn, msg: "server could not create the stream's store; asking again (the server's log has the cause)"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const cycles = 250
	for i := 0; i < cycles; i++ {
		cfg := testConfig(bustest.Options{})
		cfg.Logger = slog.New(retries)
		d, err := New(ctx, nc, cfg)
		if err != nil {
			t.Fatalf("cycle %d: New: %v", i, err)
		}
		if err := d.Close(); err != nil {
			t.Fatalf("cycle %d: Close: %v", i, err)
		}
		deleteStreams(t, nc, cfg.SubjectPrefix)
	}
	t.Logf("%d deployments created right after the previous one's streams were deleted; %d stream creations asked again", cycles, retries.n.Load())
}

// TestStoreRefusedIsNarrow checks that only the server's refusal of a
// stream's store is asked again, not every stream creation error.
func TestStoreRefusedIsNarrow(t *testing.T) {
	t.Parallel()
	refused := &jetstream.APIError{Code: 500, ErrorCode: 10049, Description: "error creating store for stream"}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{refused, true},
		{fmt.Errorf("create: %w", refused), true},
		{&jetstream.APIError{Code: 500, ErrorCode: 10049, Description: "subjects overlap with an existing stream"}, false},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamNameInUse, Description: "stream name already in use"}, false},
		{errors.New("error creating store for stream"), false},
		{context.DeadlineExceeded, false},
	} {
		if got := storeRefused(tc.err); got != tc.want {
			t.Errorf("storeRefused(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// countingHandler counts the log records of level with message msg.
type countingHandler struct {
	level slog.Level
	msg   string
	n     atomic.Int64
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level == h.level && r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

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
			d1, err := New(ctx, nc1, cfg)
			if err != nil {
				t.Fatal(err)
			}
			b1 := bus.New(d1, bus.Options{Logger: quietLogger})
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
			d2, err := New(ctx, nc2, cfg)
			if err != nil {
				t.Fatal(err)
			}
			b2 := bus.New(d2, bus.Options{Logger: quietLogger})
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
		newTestDriver(t, nc, cfg)

		cfg2 := cfg
		cfg2.DuplicateWindow = 90 * time.Second
		cfg2.MaxAge = 2 * time.Hour
		cfg2.AckDeadline = 45 * time.Second
		cfg2.MaxDeliveryAttempts = 7
		d2, err := New(ctx, nc, cfg2)
		if err != nil {
			t.Fatalf("New with changed settings: %v", err)
		}
		defer d2.Close()
		js, _ := jetstream.New(nc)
		s, err := js.Stream(ctx, cfg.SubjectPrefix+"-ingress")
		if err != nil {
			t.Fatal(err)
		}
		if c := s.CachedInfo().Config; c.Duplicates != 90*time.Second || c.MaxAge != 2*time.Hour {
			t.Errorf("stream not updated: duplicates %v max age %v", c.Duplicates, c.MaxAge)
		}
		ci, err := js.Consumer(ctx, cfg.SubjectPrefix+"-ingress", cfg.SubjectPrefix+"-pipeline")
		if err != nil {
			t.Fatal(err)
		}
		if c := ci.CachedInfo().Config; c.AckWait != 45*time.Second || c.MaxDeliver != 7 {
			t.Errorf("consumer not updated: ack wait %v max deliver %d", c.AckWait, c.MaxDeliver)
		}

		bad := testConfig(bustest.Options{})
		t.Cleanup(func() { deleteStreams(t, nc, bad.SubjectPrefix) })
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bad.SubjectPrefix + "-ingress", Subjects: []string{bad.SubjectPrefix + ".ingress"}}); err != nil {
			t.Fatal(err)
		}
		if d, err := New(ctx, nc, bad); err == nil {
			d.Close()
			t.Fatal("New accepted an ingress stream with limits retention")
		} else if !strings.Contains(err.Error(), "retention") {
			t.Errorf("New error %q does not name the retention", err)
		}
	})
}

// TestSubjectPrefixesDoNotCollide runs two deployments with different
// subject prefixes on one server: each publishes and receives its own
// messages, neither rewrites the other's streams, a stream that holds
// another prefix's subjects is refused rather than rebound, and Ping fails
// when the ingress stream stops being this deployment's.
func TestSubjectPrefixesDoNotCollide(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, nc *nats.Conn) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		o := bustest.Options{}
		cfgA := testConfig(o)
		da := newTestDriver(t, nc, cfgA)
		a := bus.New(da, busOptions(o))
		b := bus.New(newTestDriver(t, nc, testConfig(o)), busOptions(o))
		defer a.Close()
		defer b.Close()
		for _, x := range []*bus.Bus{a, b} {
			if err := x.PublishIngress(ctx, &bus.Message{ID: fmt.Sprintf("%p", x), Data: []byte("x")}); err != nil {
				t.Fatalf("publish: %v", err)
			}
			if err := x.Ping(ctx); err != nil {
				t.Errorf("Ping: %v", err)
			}
		}
		for _, x := range []*bus.Bus{a, b} {
			got := make(chan string, 4)
			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- x.ReceiveIngress(rctx, func(_ context.Context, m *bus.Message) error { got <- m.ID; return nil })
			}()
			select {
			case id := <-got:
				if id != fmt.Sprintf("%p", x) {
					t.Errorf("deployment received %s, another deployment's message", id)
				}
			case <-ctx.Done():
				t.Fatal("deployment did not receive its own message")
			}
			rcancel()
			<-done
		}

		// A stream named like this deployment's but holding another
		// prefix's subjects is refused, and left as it was.
		js, _ := jetstream.New(nc)
		mine, other := testConfig(o), uniqueName()
		t.Cleanup(func() { deleteStreams(t, nc, mine.SubjectPrefix) })
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: mine.SubjectPrefix + "-ingress", Subjects: []string{other + ".ingress"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
			t.Fatal(err)
		}
		if d, err := New(ctx, nc, mine); err == nil {
			d.Close()
			t.Fatal("New accepted a stream that holds another prefix's subjects")
		} else if !errors.Is(err, ErrForeignStream) {
			t.Errorf("New error %v, want ErrForeignStream", err)
		}
		s, err := js.Stream(ctx, mine.SubjectPrefix+"-ingress")
		if err != nil {
			t.Fatal(err)
		}
		if subj := s.CachedInfo().Config.Subjects; len(subj) != 1 || subj[0] != other+".ingress" {
			t.Errorf("refused stream rewritten to subjects %v", subj)
		}

		// Ping fails once a's ingress stream is taken over.
		sa, err := js.Stream(ctx, cfgA.SubjectPrefix+"-ingress")
		if err != nil {
			t.Fatal(err)
		}
		taken := sa.CachedInfo().Config
		taken.Subjects = []string{uniqueName() + ".ingress"}
		if _, err := js.UpdateStream(ctx, taken); err != nil {
			t.Fatal(err)
		}
		if err := a.Ping(ctx); !errors.Is(err, ErrForeignStream) {
			t.Errorf("Ping after the ingress stream was taken over returned %v, want ErrForeignStream", err)
		}
	})
}

// TestInvalidInput checks the errors for bad instance names, ids, ordering
// keys and attributes.
func TestInvalidInput(t *testing.T) {
	t.Parallel()
	s := startEmbedded(t)
	nc := connectEmbedded(t, s)
	b := newTestBus(t, nc, bustest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cases := map[string]error{
		"empty id":          b.PublishIngress(ctx, &bus.Message{Data: []byte("x")}),
		"id with newline":   b.PublishIngress(ctx, &bus.Message{ID: "a\nb"}),
		"key with newline":  b.PublishIngress(ctx, &bus.Message{ID: "a", OrderingKey: "urn:x\nRouting-Evil: 1"}),
		"reserved attr":     b.PublishIngress(ctx, &bus.Message{ID: "a", Attributes: map[string]string{"Nats-Msg-Id": "x"}}),
		"attr with newline": b.PublishIngress(ctx, &bus.Message{ID: "a", Attributes: map[string]string{"k": "a\r\nb"}}),
		"attr as key":       b.PublishIngress(ctx, &bus.Message{ID: "a", Attributes: map[string]string{hdrOrderingKey: "k"}}),
		"bad instance":      b.PublishDelivery(ctx, "a.b", &bus.Message{ID: "a"}),
		"receive bad inst":  b.ReceiveDelivery(ctx, "*", func(context.Context, *bus.Message) error { return nil }),
	}
	for name, err := range cases {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := New(ctx, nc, Config{SubjectPrefix: "bad.name"}); err == nil {
		t.Error("New accepted an invalid config")
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
			bs := newTestBus(b, nc, bustest.Options{MaxOutstanding: 1000})
			benchIngress(b, bs)
		})
	}
}

func benchIngress(b *testing.B, bs *bus.Bus) {
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
		b := newTestBus(t, nc, bustest.Options{})
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
		b := newTestDriver(t, nc, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.PrepareDelivery(ctx, "gone"); err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		name := cfg.SubjectPrefix + "-instance-gone"
		if _, err := js.Consumer(ctx, cfg.SubjectPrefix+"-delivery", name); err != nil {
			t.Fatalf("consumer %s not created: %v", name, err)
		}
		waitUntil(t, "the inactive consumer to be deleted", 15*time.Second, func() bool {
			_, err := js.Consumer(ctx, cfg.SubjectPrefix+"-delivery", name)
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
