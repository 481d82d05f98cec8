package app_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// deleteStreams removes, after the test, the JetStream streams that
// instances on the shared NATS server made under subject prefix p.
func deleteStreams(t *testing.T, url, p string) {
	t.Cleanup(func() {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Errorf("delete streams %s-*: %v", p, err)
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Errorf("delete streams %s-*: %v", p, err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range []string{"-ingress", "-delivery", "-ingress-dlq", "-delivery-dlq"} {
			if err := js.DeleteStream(ctx, p+s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", p+s, err)
			}
		}
	})
}
