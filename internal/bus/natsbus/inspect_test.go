package natsbus

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Inspect reports the streams and consumer New would create without
// creating them, finds them once New has, and refuses, untouched, a stream
// of another deployment.
func TestInspectChangesNothing(t *testing.T) {
	engines(t, func(t *testing.T, nc *nats.Conn) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cfg := Config{SubjectPrefix: uniqueName()}
		p := cfg.SubjectPrefix
		streams := []string{p + "-ingress", p + "-delivery", p + "-ingress-dlq", p + "-delivery-dlq"}

		topo, err := Inspect(ctx, nc, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if topo.Account == nil || len(topo.Streams) != 0 || !slices.Equal(topo.MissingStreams, streams) ||
			!slices.Equal(topo.MissingConsumers, []string{p + "-pipeline"}) {
			t.Fatalf("fresh prefix: %+v", topo)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range streams {
			if _, err := js.Stream(ctx, s); !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Fatalf("stream %s after Inspect: %v", s, err)
			}
		}

		newTestDriver(t, nc, cfg)
		topo, err = Inspect(ctx, nc, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(topo.Streams, streams) || len(topo.MissingStreams) != 0 ||
			!slices.Equal(topo.Consumers, []string{p + "-pipeline"}) || len(topo.MissingConsumers) != 0 {
			t.Fatalf("after New: %+v", topo)
		}

		// Another deployment's stream under this prefix's name.
		other := Config{SubjectPrefix: uniqueName()}
		t.Cleanup(func() { deleteStreams(t, nc, other.SubjectPrefix) })
		foreign := jetstream.StreamConfig{Name: other.SubjectPrefix + "-ingress", Subjects: []string{uniqueName() + ".ingress"},
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage}
		_, err = js.CreateStream(ctx, foreign)
		// As New does: the server may refuse a stream's store while it
		// removes a deleted stream's directory.
		for try := 0; err != nil && strings.Contains(err.Error(), "error creating store for stream") && try < 5; try++ {
			time.Sleep(100 * time.Millisecond)
			_, err = js.CreateStream(ctx, foreign)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Inspect(ctx, nc, other); !errors.Is(err, ErrForeignStream) {
			t.Fatalf("Inspect of a foreign stream: %v, want ErrForeignStream", err)
		}
		for _, s := range []string{other.SubjectPrefix + "-delivery", other.SubjectPrefix + "-ingress-dlq"} {
			if _, err := js.Stream(ctx, s); !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Fatalf("stream %s after Inspect: %v", s, err)
			}
		}
	})
}
