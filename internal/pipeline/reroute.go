package pipeline

import (
	"context"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
)

// rerouteBatch bounds the envelopes one sweep round routes.
const rerouteBatch = 256

// Reroute sweeps, every after/3 until ctx is done, for envelopes that were
// stored more than after ago and never routed — their routing event was not
// published (the bus was down when the API accepted them, or the API died
// between its commit and the publish) or was lost — and routes them like
// the ingress consumer does: live to the recipient's instances, or a push.
// after must exceed the time a routing event normally takes through the
// bus, or the sweep routes messages a second time (which clients
// tolerate: delivery is at-least-once).
func (p *Pipeline) Reroute(ctx context.Context, after time.Duration) {
	if after <= 0 {
		return
	}
	t := time.NewTicker(max(after/3, 100*time.Millisecond))
	defer t.Stop()
	for {
		// A full round may mean more are waiting: go on, a bounded number
		// of rounds per tick (the same envelopes come back if their routed
		// mark cannot be stored).
		for range 40 {
			if p.rerouteOnce(ctx, after) < rerouteBatch || ctx.Err() != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rerouteOnce routes one round of unrouted envelopes and returns how many
// it found.
func (p *Pipeline) rerouteOnce(ctx context.Context, after time.Duration) int {
	envs, err := p.store.Unrouted(ctx, time.Now().Add(-after), rerouteBatch)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("pipeline: reading unrouted envelopes failed", "err", err)
		}
		return 0
	}
	if len(envs) == 0 {
		return 0
	}
	ms := make([]*bus.Message, 0, len(envs))
	for _, env := range envs {
		data, err := envelope.Marshal(env)
		if err != nil {
			p.log.Error("pipeline: encoding a stored envelope failed", "id", env.ID, "err", err)
			continue
		}
		ms = append(ms, &bus.Message{ID: env.ID, Data: data, OrderingKey: env.Recipient, Attributes: map[string]string{bus.AttrStored: "1"}})
	}
	routed := 0
	for i, err := range p.handleBatch(ctx, ms, false) {
		if err != nil {
			p.log.Warn("pipeline: routing an unrouted envelope failed; the next sweep tries again", "id", ms[i].ID, "err", err)
			continue
		}
		routed++
	}
	if routed > 0 {
		p.log.Warn("pipeline: routed envelopes whose routing event was lost or never published", "count", routed)
		if p.o.Metrics != nil {
			p.o.Metrics.Rerouted.Add(float64(routed))
		}
	}
	return len(envs)
}
