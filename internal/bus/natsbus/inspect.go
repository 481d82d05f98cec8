package natsbus

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Topology is what Inspect found of a deployment's streams and its shared
// consumer on a NATS server.
type Topology struct {
	// Streams and Consumers that exist; MissingStreams and
	// MissingConsumers those New would create.
	Streams, MissingStreams     []string
	Consumers, MissingConsumers []string
	// Account is the JetStream account's usage and limits.
	Account *jetstream.AccountInfo
}

// Inspect reports whether JetStream answers on nc (its account
// information) and which of the streams and the ingress consumer of cfg
// exist, without creating, updating or deleting anything. A missing one is
// no error (New creates it); a stream of that name that New would refuse
// (another deployment's subjects, another retention or storage) is.
func Inspect(ctx context.Context, nc *nats.Conn, cfg Config) (Topology, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Topology{}, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return Topology{}, fmt.Errorf("natsbus: jetstream: %w", err)
	}
	var t Topology
	if t.Account, err = js.AccountInfo(ctx); err != nil {
		return Topology{}, fmt.Errorf("natsbus: jetstream account info: %w", err)
	}
	d := newDriver(nc, js, cfg)
	for _, want := range d.streams() {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			t.MissingStreams = append(t.MissingStreams, want.Name)
			continue
		}
		if err != nil {
			return Topology{}, fmt.Errorf("natsbus: stream %s: %w", want.Name, err)
		}
		if err := refuseStream(s.CachedInfo().Config, want); err != nil {
			return Topology{}, err
		}
		t.Streams = append(t.Streams, want.Name)
	}
	if slices.Contains(t.MissingStreams, d.ingress.stream) {
		t.MissingConsumers = append(t.MissingConsumers, d.ingressConsumer)
		return t, nil
	}
	_, err = js.Consumer(ctx, d.ingress.stream, d.ingressConsumer)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		t.MissingConsumers = append(t.MissingConsumers, d.ingressConsumer)
	case err != nil:
		return Topology{}, fmt.Errorf("natsbus: consumer %s on stream %s: %w", d.ingressConsumer, d.ingress.stream, err)
	default:
		t.Consumers = append(t.Consumers, d.ingressConsumer)
	}
	return t, nil
}
