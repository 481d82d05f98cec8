package bus

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// nopDriver accepts every publish at once and settles nothing.
type nopDriver struct{}

func (nopDriver) Capabilities() driver.Capabilities                        { return driver.Capabilities{} }
func (nopDriver) Publish(context.Context, string, []*driver.Message) error { return nil }
func (nopDriver) PrepareDelivery(context.Context, string) error            { return nil }
func (nopDriver) Subscribe(context.Context, string, string) (driver.Subscription, error) {
	return nil, driver.ErrClosed
}
func (nopDriver) DeadLetter(context.Context, string, *driver.Message) error { return nil }
func (nopDriver) ListDead(context.Context, string, int) ([]driver.DeadMessage, error) {
	return nil, nil
}
func (nopDriver) GetDead(context.Context, string, string) (driver.DeadMessage, error) {
	return driver.DeadMessage{}, driver.ErrNotFound
}
func (nopDriver) DeleteDead(context.Context, string, []string) (int, error) { return 0, nil }
func (nopDriver) OnEngineDeadLetter(func(string))                           {}
func (nopDriver) IngressBacklog(context.Context) (int64, error)             { return 0, nil }
func (nopDriver) CheckSetup(context.Context) error                          { return nil }
func (nopDriver) Ping(context.Context) error                                { return nil }
func (nopDriver) Close() error                                              { return nil }

type nopAcker struct{}

func (nopAcker) Ack() error               { return nil }
func (nopAcker) Nack(time.Duration) error { return nil }
func (nopAcker) Extend() error            { return nil }

// BenchmarkPublishAndHandle is the bus's own work for one ingress message
// on its hot path, the engine left out: the publish (attribute checks,
// conversion) and the handling of a received message (handler call,
// settling). "off" is the default (no tracer provider): it must cost what
// the bus cost before tracing existed, with no allocation added; "on"
// records every span (sampled; no exporter) for comparison.
func BenchmarkPublishAndHandle(b *testing.B) {
	cases := map[string]trace.TracerProvider{
		"off": nil,
		"on":  sdktrace.NewTracerProvider(), // every span sampled and recorded, exported nowhere
	}
	for _, name := range []string{"off", "on"} {
		b.Run(name, func(b *testing.B) {
			bs := New(nopDriver{}, Options{TracerProvider: cases[name], System: "nats"})
			defer bs.Close()
			ctx := context.Background()
			m := &Message{ID: "01JD0000000000000000000000", Data: make([]byte, 300), OrderingKey: "urn:sm:user:bob", Attributes: map[string]string{AttrStored: "1"}}
			handler := func(ctx context.Context, ms []*Message) []error { return nil }
			dm := &driver.Message{ID: m.ID, Data: m.Data, Attributes: m.Attributes, OrderingKey: m.OrderingKey, DeliveryAttempt: 1, Acker: nopAcker{}}
			batch := []received{{dm: dm}}
			g := newGate(func(bool) {})
			b.ReportAllocs()
			for b.Loop() {
				if err := bs.PublishIngress(ctx, m); err != nil {
					b.Fatal(err)
				}
				batch[0].m = incoming(dm)
				bs.run(ctx, QueueIngress, handler, batch, g)
			}
		})
	}
}
