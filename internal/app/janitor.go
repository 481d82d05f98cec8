package app

import (
	"context"
	"slices"

	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
	"github.com/go-routing-service/routingservice/internal/presence"
)

// runDeliveryJanitor removes, until ctx is done, the Pub/Sub delivery
// topics of realtime instances that died without removing theirs
// (gcppubsub.Janitor). It runs with the pipeline role, which every
// deployment has and which runs on fewer instances than realtime; several
// janitors at once are harmless. It has its own Pub/Sub client, apart from
// the bus. A janitor that cannot start is logged, never fatal: the topics
// of instances gone cost nothing but a place in the project's topic quota.
func (a *App) runDeliveryJanitor(ctx context.Context) {
	pc, opts := pubsubConfig(a.cfg, a.log)
	log := a.log.With("role", "janitor")
	j, err := gcppubsub.NewJanitor(ctx, pc, gcppubsub.JanitorOptions{
		TopicTTL: a.cfg.Bus.PubSub.DeliveryTopicTTL,
		Presence: instancePresence{a.presence},
		Logger:   log,
	}, opts...)
	if err != nil {
		log.Warn("delivery topic janitor not started", "err", err)
		return
	}
	defer j.Close()
	j.Run(ctx)
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
