package app

import (
	"context"
	"slices"

	"github.com/go-routing-service/routingservice/internal/presence"
)

// runMaintenance runs the bus engine's upkeep until ctx is done (the
// pipeline role runs it; on Pub/Sub, the delivery topic janitor), with
// this instance's presence saying which realtime instances are present.
func (a *App) runMaintenance(ctx context.Context) {
	cfg := a.cfg
	cfg.Bus.Engine().Maintain(ctx, cfg.Bus.Config, cfg.BusEnv(a.log.With("role", "janitor")), instancePresence{a.presence})
}

// instancePresence answers which realtime instances are present from the
// marker entry each realtime instance keeps in the presence registry: a
// connection of the reserved user "urn:sm:instance:<instance>" (no client
// can be that user), refreshed with its heartbeat. One round trip for
// every instance asked about.
type instancePresence struct{ p presence.Presence }

// instanceMarkerUser is the reserved user of instance's presence marker
// (the realtime role registers it).
func instanceMarkerUser(instance string) string { return "urn:sm:instance:" + instance }

func (ip instancePresence) Present(ctx context.Context, instances []string) ([]bool, error) {
	users := make([]string, len(instances))
	for i, inst := range instances {
		users[i] = instanceMarkerUser(inst)
	}
	held, err := ip.p.InstancesOf(ctx, users)
	if err != nil {
		return nil, err
	}
	out := make([]bool, len(instances))
	for i, inst := range instances {
		out[i] = slices.Contains(held[i], inst)
	}
	return out, nil
}
