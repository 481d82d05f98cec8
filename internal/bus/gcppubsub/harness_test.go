package gcppubsub_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/bustest"
	"github.com/go-routing-service/routingservice/internal/bus/driver"
	"github.com/go-routing-service/routingservice/internal/bus/drivertest"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
)

const testProject = "routing-test"

// fake is one in-process Pub/Sub fake, closed when the test ends.
type fake struct {
	srv   *pstest.Server
	close func() // closes srv once (pstest panics on a second Close)
	opts  []option.ClientOption
}

// newFake starts a fake; reactors, if any, intercept its calls.
func newFake(t *testing.T, reactors ...pstest.ServerReactorOption) *fake {
	t.Helper()
	srv := pstest.NewServer(reactors...)
	closeSrv := sync.OnceFunc(func() { _ = srv.Close() })
	t.Cleanup(closeSrv)
	return &fake{srv: srv, close: closeSrv, opts: []option.ClientOption{
		option.WithEndpoint(srv.Addr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}}
}

// testConfig is a configuration with explicit ack deadlines (the fake's
// minimum is global state that tests never touch).
func testConfig(t testing.TB) gcppubsub.Config {
	return gcppubsub.Config{
		ProjectID:                      testProject,
		IngressTopic:                   "ingress",
		IngressSubscription:            "pipeline",
		DeliveryTopic:                  "delivery",
		DeliverySubscriptionPrefix:     "delivery-",
		DeliverySubscriptionExpiration: 36 * time.Hour,
		IngressDeadLetterTopic:         "ingress-dlq",
		DeliveryDeadLetterTopic:        "delivery-dlq",
		MaxDeliveryAttempts:            5,
		AckDeadline:                    10 * time.Second,
		MinBackoff:                     100 * time.Millisecond,
		MaxBackoff:                     2 * time.Second,
		MaxOutstanding:                 100,
		Logger:                         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// testWriter sends logs to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (f *fake) newDriver(t testing.TB, cfg gcppubsub.Config) *gcppubsub.Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d, err := gcppubsub.New(ctx, cfg, f.opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// newBus is the portable bus over a new driver with cfg's delivery policy,
// closed when t ends.
func (f *fake) newBus(t testing.TB, cfg gcppubsub.Config) *bus.Bus {
	t.Helper()
	b := bus.New(f.newDriver(t, cfg), bus.Options{
		MaxDeliveryAttempts: cfg.MaxDeliveryAttempts,
		MinBackoff:          cfg.MinBackoff,
		MaxBackoff:          cfg.MaxBackoff,
		MaxOutstanding:      cfg.MaxOutstanding,
		Logger:              cfg.Logger,
	})
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// harness builds each driver on its own fake, mapping the suites' options
// onto what Pub/Sub accepts (ack deadline at least 10s, 5 to 100 attempts).
// legacy runs it with LegacySharedDelivery (each instance reads its own
// topic and its filtered subscription on the shared one).
type harness struct{ legacy bool }

func (h harness) config(t *testing.T, o bustest.Options) gcppubsub.Config {
	cfg := testConfig(t)
	cfg.LegacySharedDelivery = h.legacy
	if o.MaxDeliveryAttempts != 0 {
		cfg.MaxDeliveryAttempts = min(max(o.MaxDeliveryAttempts, 5), 100)
	}
	if o.AckDeadline != 0 {
		cfg.AckDeadline = min(max(o.AckDeadline.Round(time.Second), 10*time.Second), 600*time.Second)
	}
	if o.MinBackoff != 0 {
		cfg.MinBackoff = o.MinBackoff
	}
	if o.MaxBackoff != 0 {
		cfg.MaxBackoff = o.MaxBackoff
	}
	if o.MaxOutstanding != 0 {
		cfg.MaxOutstanding = o.MaxOutstanding
	}
	// The fake delivers about 100 messages/s per stream.
	cfg.Streams = 8
	cfg.DeadLetterPullWait = time.Second
	return cfg
}

func (h harness) MakeDriver(t *testing.T, o bustest.Options) driver.Driver {
	return newFake(t).newDriver(t, h.config(t, o))
}

func (h harness) MakeTestDriver(t *testing.T, o drivertest.Options) driver.Driver {
	return newFake(t).newDriver(t, h.config(t, bustest.Options{AckDeadline: o.AckDeadline, MaxDeliveryAttempts: o.MaxDeliveryAttempts}))
}

// Unkept: the fake stores a subscription's retry policy but redelivers a
// nacked message at once.
func (harness) Unkept(p drivertest.Promise) string {
	if p == drivertest.PromiseRetryBackoff {
		return "the Pub/Sub fake (pstest) stores the retry policy but does not enforce it"
	}
	return ""
}

func TestDriver(t *testing.T) {
	drivertest.RunDriverTests(t, harness{})
}

func TestConformance(t *testing.T) {
	bustest.RunConformanceTests(t, harness{})
}

// While a deployment moves over from the shared delivery topic, its
// instances read both layouts: the portable promises hold there too.
func TestDriverLegacySharedDelivery(t *testing.T) {
	drivertest.RunDriverTests(t, harness{legacy: true})
}

func TestConformanceLegacySharedDelivery(t *testing.T) {
	bustest.RunConformanceTests(t, harness{legacy: true})
}

func TestBatches(t *testing.T) {
	bustest.RunBatchTests(t, harness{})
}

func TestPacks(t *testing.T) {
	bustest.RunPackTests(t, harness{})
}

func TestTraces(t *testing.T) {
	bustest.RunTraceTests(t, harness{})
}

func TestDeadLetterConformance(t *testing.T) {
	bustest.RunDeadLetterTests(t, harness{})
}
