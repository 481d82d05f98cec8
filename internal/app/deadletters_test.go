package app_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/admin"
	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// engines are the bus engines the dead-letter tests run on: the embedded
// server always, the external NATS server when ROUTING_TEST_NATS_URL is set.
func engines(t *testing.T) map[string]func(*config.Config) {
	out := map[string]func(*config.Config){"embedded": func(*config.Config) {}}
	url := os.Getenv("ROUTING_TEST_NATS_URL")
	if url == "" {
		t.Log("ROUTING_TEST_NATS_URL is unset: skipping the external NATS engine")
		return out
	}
	out["nats"] = func(c *config.Config) {
		var b [4]byte
		_, _ = rand.Read(b[:])
		p := "dl" + hex.EncodeToString(b[:])
		deleteStreams(t, url, p)
		c.Bus.Type = "nats"
		c.Bus.NATS.URL = url
		c.Bus.NATS.SubjectPrefix = p
		c.Bus.IngressTopic, c.Bus.IngressSubscription, c.Bus.DeliveryTopic = p+"-in", p+"-pipe", p+"-dl"
		c.Bus.IngressDeadLetterTopic, c.Bus.DeliveryDeadLetterTopic = p+"-in-dlq", p+"-dl-dlq"
	}
	return out
}

// sendMany sends n messages from sender to recipient, 8 at a time.
func sendMany(t *testing.T, sender *client.Client, recipient string, n int) {
	t.Helper()
	ctx := ctxT(t)
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if _, err := sender.Send(ctx, client.Message{Recipient: recipient, Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// pending counts the recipient's pending messages.
func pending(t *testing.T, c *client.Client) int {
	t.Helper()
	n, cursor := 0, ""
	for {
		p, err := c.Fetch(ctxT(t), cursor, 500)
		if err != nil {
			t.Fatal(err)
		}
		n += len(p.Messages)
		if p.NextCursor == "" {
			return n
		}
		cursor = p.NextCursor
	}
}

func deadList(t *testing.T, ac *admin.Client, queue string) []admin.DeadMessage {
	t.Helper()
	msgs, err := ac.List(ctxT(t), queue, 0)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// A poison message published straight onto the ingress topic among 1,000
// good ones: every good one is stored, the poison one is dead-lettered after
// one attempt (it is undecodable: permanent), and a replay of it lands it
// in the dead-letter queue again; purge empties the queue.
func TestPoisonMessageAmongGoodOnes(t *testing.T) {
	for name, engine := range engines(t) {
		t.Run(name, func(t *testing.T) {
			ta := startAppWith(t, engine, app.Options{})
			if ta.app.AdminSocket() != filepath.Join(ta.cfg.DataDir, "admin.sock") {
				t.Fatalf("admin socket %q", ta.app.AdminSocket())
			}
			ac := admin.NewClient(ta.app.AdminSocket())
			metrics := ta.app.Metrics()
			alice := ta.client(t, "urn:sm:user:alice")
			bob := ta.client(t, "urn:sm:user:bob-offline")

			sendMany(t, alice, "urn:sm:user:bob-offline", 500)
			poison := &bus.Message{ID: "poison-1", Data: []byte("this is not an envelope")}
			if err := ta.app.Bus().PublishIngress(ctxT(t), poison); err != nil {
				t.Fatal(err)
			}
			sendMany(t, alice, "urn:sm:user:bob-offline", 500)

			eventually(t, "1,000 messages stored", func() bool { return pending(t, bob) == 1000 })
			eventually(t, "the poison message dead-lettered", func() bool {
				return testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(bus.QueueIngress)) == 1
			})
			dead := deadList(t, ac, bus.QueueIngress)
			if len(dead) != 1 || dead[0].MessageID != "poison-1" || dead[0].Attempts != 1 ||
				dead[0].Size != len(poison.Data) || dead[0].Reason == "" {
				t.Fatalf("ingress dead letters: %+v", dead)
			}
			if got := testutil.ToFloat64(metrics.PipelineHandled.WithLabelValues("ok")); got != 1000 {
				t.Fatalf("pipeline handled %v good messages, want 1000", got)
			}
			if d := deadList(t, ac, bus.QueueDelivery); len(d) != 0 {
				t.Fatalf("delivery dead letters: %+v", d)
			}

			// Replaying it changes nothing about it: it comes back.
			n, err := ac.Replay(ctxT(t), bus.QueueIngress, []string{dead[0].ID})
			if err != nil || n != 1 {
				t.Fatalf("replay: %d, %v", n, err)
			}
			eventually(t, "the replayed poison message dead-lettered again", func() bool {
				return testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(bus.QueueIngress)) == 2
			})
			again := deadList(t, ac, bus.QueueIngress)
			if len(again) != 1 || again[0].MessageID != "poison-1" || again[0].Attempts != 1 || again[0].ID == dead[0].ID {
				t.Fatalf("after replay: %+v", again)
			}
			if v := testutil.ToFloat64(metrics.DeadReplayed.WithLabelValues(bus.QueueIngress)); v != 1 {
				t.Fatalf("replayed counter %v", v)
			}
			if n, err := ac.Purge(ctxT(t), bus.QueueIngress, nil, true); err != nil || n != 1 {
				t.Fatalf("purge: %d, %v", n, err)
			}
			if d := deadList(t, ac, bus.QueueIngress); len(d) != 0 {
				t.Fatalf("after purge: %+v", d)
			}
			if v := testutil.ToFloat64(metrics.DeadPurged.WithLabelValues(bus.QueueIngress)); v != 1 {
				t.Fatalf("purged counter %v", v)
			}
			if pending(t, bob) != 1000 {
				t.Fatal("good messages changed")
			}
		})
	}
}

// flakyStore fails PutMessages and PutNew while down is set, and
// PutMessages always for the recipient broken while brokenDown is set.
type flakyStore struct {
	store.Store
	down       atomic.Bool
	brokenDown atomic.Bool
	broken     string
	failures   atomic.Int64
	brokenPuts atomic.Int64
}

var errStoreDown = errors.New("store unavailable (injected)")

func (s *flakyStore) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	for _, e := range envs {
		if e.Recipient == s.broken {
			s.brokenPuts.Add(1)
			if s.brokenDown.Load() {
				return nil, errStoreDown
			}
		}
	}
	if s.down.Load() {
		s.failures.Add(1)
		return nil, errStoreDown
	}
	return s.Store.PutMessages(ctx, envs)
}

func (s *flakyStore) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	if s.down.Load() {
		s.failures.Add(1)
		return nil, errStoreDown
	}
	return s.Store.PutNew(ctx, msgs)
}

// publishUnstored publishes an envelope on the ingress queue the way an
// older producer did, without the store having it: the pipeline stores it.
func publishUnstored(t *testing.T, b *bus.Bus, recipient, payload string) string {
	t.Helper()
	now := envelope.Now()
	env := &envelope.Envelope{ID: envelope.NewIDs().New(now), Sender: "urn:sm:user:alice", Recipient: recipient, Payload: []byte(payload), CreatedAt: now}
	data, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.PublishIngress(ctxT(t), &bus.Message{ID: env.ID, Data: data, OrderingKey: recipient}); err != nil {
		t.Fatal(err)
	}
	return env.ID
}

// A store outage in the middle of a run. The API stores each message
// before it answers: during the outage sends are refused with 503 and
// none of them is ever stored or delivered; before and after it every 202
// is stored. Messages the pipeline itself must store (published on the
// bus without being stored) are retried with backoff through the outage,
// none is dead-lettered too early and none is lost; one whose store writes
// keep failing is dead-lettered after exactly bus.max_delivery_attempts
// attempts, and a replay once the cause is fixed stores it.
func TestStoreOutage(t *testing.T) {
	for name, engine := range engines(t) {
		t.Run(name, func(t *testing.T) {
			fs := &flakyStore{broken: "urn:sm:user:broken"}
			fs.brokenDown.Store(true)
			ta := startAppWith(t, func(c *config.Config) {
				engine(c)
				c.Bus.MaxDeliveryAttempts = 5
				// Attempts at about 0, 0.2, 0.6, 1.4 and 3s: an outage of
				// well under a second must never reach the last one.
				c.Bus.MinBackoff = 200 * time.Millisecond
				c.Bus.MaxBackoff = 2 * time.Second
			}, app.Options{WrapStore: func(s store.Store) store.Store { fs.Store = s; return fs }})
			ac := admin.NewClient(ta.app.AdminSocket())
			metrics := ta.app.Metrics()
			alice := ta.client(t, "urn:sm:user:alice")
			bob := ta.client(t, "urn:sm:user:bob-outage")

			sendMany(t, alice, "urn:sm:user:bob-outage", 100)
			fs.down.Store(true)
			for i := range 20 {
				_, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob-outage", Payload: fmt.Appendf(nil, "refused-%d", i)})
				var apiErr *client.Error
				if !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable {
					t.Fatalf("send during the store outage: %v, want 503", err)
				}
			}
			var unstored []string
			for i := range 50 {
				unstored = append(unstored, publishUnstored(t, ta.app.Bus(), "urn:sm:user:bob-outage", fmt.Sprintf("bus-%d", i)))
			}
			eventually(t, "messages retried during the outage", func() bool {
				return testutil.ToFloat64(metrics.PipelineHandled.WithLabelValues("retry")) >= 10
			})
			fs.down.Store(false)
			sendMany(t, alice, "urn:sm:user:bob-outage", 100)

			eventually(t, "all 250 accepted messages stored", func() bool { return pending(t, bob) == 250 })
			for p, cursor := (client.Page{}), ""; ; cursor = p.NextCursor {
				var err error
				if p, err = bob.Fetch(ctxT(t), cursor, 500); err != nil {
					t.Fatal(err)
				}
				for _, m := range p.Messages {
					if strings.HasPrefix(string(m.Payload), "refused-") {
						t.Fatalf("a message refused with 503 was stored: %s", m.Payload)
					}
				}
				if p.NextCursor == "" {
					break
				}
			}
			if fs.failures.Load() == 0 {
				t.Fatal("the outage failed no write")
			}
			if d := deadList(t, ac, bus.QueueIngress); len(d) != 0 {
				t.Fatalf("dead-lettered during a short outage: %+v", d)
			}
			if v := testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(bus.QueueIngress)); v != 0 {
				t.Fatalf("dead-lettered counter %v", v)
			}

			// A message whose write keeps failing: dead after exactly 5 attempts.
			id := publishUnstored(t, ta.app.Bus(), "urn:sm:user:broken", "x")
			eventually(t, "the failing message dead-lettered", func() bool {
				return testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(bus.QueueIngress)) == 1
			})
			dead := deadList(t, ac, bus.QueueIngress)
			if len(dead) != 1 || dead[0].Attempts != 5 || !strings.Contains(dead[0].Reason, "injected") {
				t.Fatalf("dead letters: %+v", dead)
			}
			if n := fs.brokenPuts.Load(); n != 5 {
				t.Fatalf("%d store writes of the failing message, want 5", n)
			}
			// The cause is fixed: a replay stores it.
			fs.brokenDown.Store(false)
			if n, err := ac.Replay(ctxT(t), bus.QueueIngress, nil); err != nil || n != 1 {
				t.Fatalf("replay: %d, %v", n, err)
			}
			broken := ta.client(t, "urn:sm:user:broken")
			eventually(t, "the replayed message stored", func() bool {
				p, err := broken.Fetch(ctxT(t), "", 10)
				return err == nil && len(p.Messages) == 1 && p.Messages[0].ID == id
			})
			if d := deadList(t, ac, bus.QueueIngress); len(d) != 0 {
				t.Fatalf("dead letters after the replay: %+v", d)
			}
		})
	}
}

// A second instance on the same socket refuses to start while the first
// serves it; the socket file is removed on exit; "-" disables the socket.
func TestAdminSocket(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.API.Listen, cfg.Realtime.Listen, cfg.Ops.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Push.WebPush.Enabled = false
	cfg.FillDefaults()
	if err := cfg.LoadLocalSecret(); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, err := app.New(ctx, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	path := first.AdminSocket()
	if _, err := admin.NewClient(path).List(ctxT(t), bus.QueueIngress, 0); err != nil {
		t.Fatalf("admin socket of a running instance: %v", err)
	}

	second := cfg
	second.DataDir = t.TempDir()
	second.Store.SQLite.Path = filepath.Join(second.DataDir, "routing.db")
	second.Admin.Socket = path
	_, err = app.New(context.Background(), second, quiet)
	if !errors.Is(err, admin.ErrInUse) || !strings.Contains(err.Error(), "admin.socket") {
		t.Fatalf("second instance on the socket: %v", err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after exit: %v", err)
	}

	off := startAppWith(t, func(c *config.Config) { c.Admin.Socket = "-" }, app.Options{})
	if off.app.AdminSocket() != "" {
		t.Fatalf("disabled socket is %q", off.app.AdminSocket())
	}
	if _, err := os.Stat(filepath.Join(off.cfg.DataDir, "admin.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file with admin.socket \"-\": %v", err)
	}
}

// The same on Google Cloud Pub/Sub (the official fake, reached through
// PUBSUB_EMULATOR_HOST): the poison message is dead-lettered after one
// attempt and counted, the good ones are stored, /readyz includes the
// dead-letter setup check, and the admin socket lists and purges it.
func TestPoisonMessagePubSub(t *testing.T) {
	srv := pstest.NewServer()
	t.Cleanup(func() { srv.Close() })
	t.Setenv("PUBSUB_EMULATOR_HOST", srv.Addr)
	ta := startAppWith(t, func(c *config.Config) {
		c.Bus.Type = "pubsub"
		c.Bus.PubSub.ProjectID = "dlq-test"
		c.Bus.AckDeadline = 10 * time.Second
	}, app.Options{})
	if code := get(t, ta.opsURL+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d", code)
	}
	if !ta.app.Bus().Capabilities().SetupCheck {
		t.Fatal("the Pub/Sub driver does not offer its dead-letter setup check, so /readyz would not include it")
	}
	ac := admin.NewClient(ta.app.AdminSocket())
	metrics := ta.app.Metrics()
	alice := ta.client(t, "urn:sm:user:alice")
	bob := ta.client(t, "urn:sm:user:bob-pubsub")
	sendMany(t, alice, "urn:sm:user:bob-pubsub", 20)
	if err := ta.app.Bus().PublishIngress(ctxT(t), &bus.Message{ID: "poison-ps", Data: []byte("not an envelope")}); err != nil {
		t.Fatal(err)
	}
	sendMany(t, alice, "urn:sm:user:bob-pubsub", 20)
	eventually(t, "40 messages stored", func() bool { return pending(t, bob) == 40 })
	eventually(t, "the poison message dead-lettered", func() bool {
		return testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(bus.QueueIngress)) == 1
	})
	dead := deadList(t, ac, bus.QueueIngress)
	if len(dead) != 1 || dead[0].MessageID != "poison-ps" || dead[0].Attempts != 1 || dead[0].Reason == "" {
		t.Fatalf("ingress dead letters: %+v", dead)
	}
	if n, err := ac.Purge(ctxT(t), bus.QueueIngress, []string{dead[0].ID}, false); err != nil || n != 1 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	if d := deadList(t, ac, bus.QueueIngress); len(d) != 0 {
		t.Fatalf("after purge: %+v", d)
	}
}
