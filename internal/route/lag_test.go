package route

import (
	"context"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// watchLag reads the age of the oldest unrouted message and the number of
// pending messages from the store into their gauges.
func TestWatchLagSetsGauges(t *testing.T) {
	old := &envelope.Envelope{ID: "a", CreatedAt: time.Now().Add(-time.Minute)}
	st := &fakeStore{envs: []*envelope.Envelope{old, {ID: "b", CreatedAt: time.Now()}, {ID: "c", CreatedAt: time.Now()}},
		routed: map[string]bool{"b": true, "c": true}}
	m := telemetry.NewMetrics()
	p := New(Options{Instance: "self", Metrics: m, HandlerTimeout: time.Second, LagInterval: time.Hour}, st, fakePresence{}, &fakeBus{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // one reading, then watchLag returns
	p.watchLag(ctx)
	if got := testutil.ToFloat64(m.StorePending); got != 3 {
		t.Errorf("pending gauge %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.PipelineLag); got < 59 || got > 120 {
		t.Errorf("lag gauge %v, want about 60 s", got)
	}
}
