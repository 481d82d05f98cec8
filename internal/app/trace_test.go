package app_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/telemetry/otlptest"
	"github.com/go-routing-service/routingservice/internal/testkit"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// traceparentTransport adds the trace context of its context's span to
// each request, as a traced caller does.
type traceparentTransport struct{ sc trace.SpanContext }

func (t traceparentTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(trace.ContextWithSpanContext(r.Context(), t.sc))
	propagation.TraceContext{}.Inject(r.Context(), propagation.HeaderCarrier(r.Header))
	return http.DefaultTransport.RoundTrip(r)
}

// hop is a span the message's trace must hold, and the span it is the
// child of.
type hop struct{ name, parent string }

// sendTraced sends one message from a caller with its own trace
// (traceparent) to bob, connected to the realtime instance rt, reads it
// over the WebSocket and acks it there; it returns the caller's span
// context and the message id.
func sendTraced(t *testing.T, tp trace.TracerProvider, api, rt *testApp) (trace.SpanContext, string) {
	t.Helper()
	const payload = "secret-payload-bytes"
	bob := rt.client(t, "urn:sm:user:bob-traced")
	conn, err := bob.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connected(t, rt, 1)
	_, caller := tp.Tracer("caller").Start(context.Background(), "caller")
	alice := api.client(t, "urn:sm:user:alice-traced")
	alice.HTTP = &http.Client{Transport: traceparentTransport{caller.SpanContext()}}
	acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob-traced", Payload: []byte(payload)})
	caller.End()
	if err != nil {
		t.Fatal(err)
	}
	env := next(t, conn)
	if env.ID != acc.ID {
		t.Fatalf("received %s, sent %s", env.ID, acc.ID)
	}
	if err := conn.Ack(ctxT(t), env.ID); err != nil {
		t.Fatal(err)
	}
	return caller.SpanContext(), acc.ID
}

// checkTrace waits until the caller's trace holds every hop, each the
// child of its parent hop, and checks that no span records the payload, a
// URN or a token.
func checkTrace(t *testing.T, rec *tracetest.SpanRecorder, caller trace.SpanContext, hops []hop) {
	t.Helper()
	byName := func() map[string][]sdktrace.ReadOnlySpan {
		out := map[string][]sdktrace.ReadOnlySpan{}
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() == caller.TraceID() {
				out[s.Name()] = append(out[s.Name()], s)
			}
		}
		return out
	}
	var spans map[string][]sdktrace.ReadOnlySpan
	missing := func() []string {
		var out []string
		for _, h := range hops {
			if len(spans[h.name]) == 0 {
				out = append(out, h.name)
			}
		}
		return out
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		spans = byName()
		if len(missing()) == 0 {
			break
		}
		if time.Now().After(deadline) {
			var have []string
			for name := range spans {
				have = append(have, name)
			}
			t.Fatalf("the caller's trace lacks %q; it has %q", missing(), have)
		}
	}
	ids := map[string]trace.SpanID{"caller": caller.SpanID()}
	for _, h := range hops {
		ids[h.name] = spans[h.name][0].SpanContext().SpanID()
	}
	for _, h := range hops {
		ok := false
		for _, s := range spans[h.name] {
			if s.Parent().SpanID() == ids[h.parent] {
				ok = true
			}
		}
		if !ok {
			t.Errorf("span %q: no copy is a child of %q", h.name, h.parent)
		}
	}
	for _, s := range rec.Ended() {
		for _, a := range s.Attributes() {
			v := a.Value.Emit()
			if strings.Contains(v, "secret-payload") || strings.Contains(v, "c2VjcmV0") || strings.Contains(v, "urn:sm:user") || strings.Contains(v, "Bearer") {
				t.Errorf("span %q records %s = %q", s.Name(), a.Key, v)
			}
		}
	}
	if t.Failed() {
		for name, ss := range spans {
			for _, s := range ss {
				t.Logf("%s %s parent %s", name, s.SpanContext().SpanID(), s.Parent().SpanID())
			}
		}
	}
}

func newRecorder() (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	rec := tracetest.NewSpanRecorder()
	return rec, sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
}

// The hops from the caller to the ingress consumer, and from the frame's
// write to the store delete, on every setup that routes over the ingress
// topic.
var (
	acceptHops = append(storeHops,
		hop{"send ingress", "accept"},
		hop{"process ingress", "send ingress"},
		hop{"presence lookup", "process ingress"},
	)
	storeHops = []hop{
		{"POST /v1/messages", "caller"},
		{"accept", "POST /v1/messages"},
		{"store write", "accept"},
	}
	ackHops = []hop{
		{"websocket ack", "websocket write"},
		{"store delete", "websocket ack"},
	}
)

// On the embedded default, one message sent with a caller's traceparent,
// routed and delivered in process to a WebSocket, is one trace from the
// caller's span to the store delete of its ack.
func TestOneTracePerMessageEmbedded(t *testing.T) {
	rec, tp := newRecorder()
	ta := startAppWith(t, nil, app.Options{TracerProvider: tp})
	caller, _ := sendTraced(t, tp, ta, ta)
	hops := append(append(slices.Clone(storeHops),
		hop{"route local", "accept"},
		hop{"presence lookup", "route local"},
		hop{"deliver local", "route local"},
		hop{"websocket write", "deliver local"}), ackHops...)
	checkTrace(t, rec, caller, hops)
}

// The same with pipeline.local_handoff off: the routing event crosses the
// ingress topic of the embedded bus.
func TestOneTracePerMessageEmbeddedIngressTopic(t *testing.T) {
	rec, tp := newRecorder()
	ta := startAppWith(t, func(c *config.Config) { c.Pipeline.LocalHandoff = false }, app.Options{TracerProvider: tp})
	caller, _ := sendTraced(t, tp, ta, ta)
	hops := append(append(slices.Clone(acceptHops),
		hop{"deliver local", "process ingress"},
		hop{"websocket write", "deliver local"}), ackHops...)
	checkTrace(t, rec, caller, hops)
}

// With the api, pipeline and realtime roles on three instances, the trace
// crosses the bus twice: ingress and delivery.
func TestOneTracePerMessageSplitRolesNATS(t *testing.T) {
	url := os.Getenv("ROUTING_TEST_NATS_URL")
	if url == "" {
		t.Skip("set ROUTING_TEST_NATS_URL to run the split-role trace test on NATS")
	}
	p := randomID("tr")
	deleteStreams(t, url, p)
	runSplitRoles(t, func(c *config.Config) {
		c.Bus.Type = "nats"
		c.Bus.NATS.URL = url
		c.Bus.NATS.SubjectPrefix = p
		c.Bus.IngressTopic, c.Bus.IngressSubscription, c.Bus.DeliveryTopic = p+"-in", p+"-pipe", p+"-dl"
		c.Bus.IngressDeadLetterTopic, c.Bus.DeliveryDeadLetterTopic = p+"-in-dlq", p+"-dl-dlq"
	})
}

// The same on Google Cloud Pub/Sub (the official fake).
func TestOneTracePerMessageSplitRolesPubSub(t *testing.T) {
	srv := pstest.NewServer()
	t.Cleanup(func() { srv.Close() })
	t.Setenv("PUBSUB_EMULATOR_HOST", srv.Addr)
	project := randomID("trace-")
	runSplitRoles(t, func(c *config.Config) {
		c.Bus.Type = "pubsub"
		c.Bus.PubSub.ProjectID = project
		c.Bus.AckDeadline = 10 * time.Second
	})
}

func randomID(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// runSplitRoles runs three instances on the bus set by busConfig, sharing
// PostgreSQL and Redis, one role each, and checks one message's trace.
func runSplitRoles(t *testing.T, busConfig func(*config.Config)) {
	pgURL, redisAddr := os.Getenv("ROUTING_TEST_POSTGRES_URL"), os.Getenv("ROUTING_TEST_REDIS_ADDR")
	if pgURL == "" || redisAddr == "" {
		t.Skip("set ROUTING_TEST_POSTGRES_URL and ROUTING_TEST_REDIS_ADDR to run the split-role trace tests")
	}
	schema, prefix := randomID("trace_"), randomID("trace:")+":"
	testkit.DeleteRedisKeys(t, redisAddr, prefix)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, pgURL); err == nil {
			_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
			conn.Close(ctx)
		}
	})
	rec, tp := newRecorder()
	start := func(id, role string) *testApp {
		return startAppWith(t, func(c *config.Config) {
			c.InstanceID = id
			c.Roles = []string{role}
			c.Store.Type = "postgres"
			c.Store.Postgres.Schema = schema
			c.DatabaseURL = pgURL
			c.Presence.Type = "redis"
			c.Presence.Redis.Addr = redisAddr
			c.Presence.Redis.KeyPrefix = prefix
			busConfig(c)
		}, app.Options{TracerProvider: tp})
	}
	// The pipeline first: it creates the ingress subscription.
	start("trace-pipeline", config.RolePipeline)
	rt := start("trace-realtime", config.RoleRealtime)
	api := start("trace-api", config.RoleAPI)
	caller, _ := sendTraced(t, tp, api, rt)
	hops := append(append(slices.Clone(acceptHops),
		hop{"send delivery", "process ingress"},
		hop{"process delivery", "send delivery"},
		hop{"websocket write", "process delivery"}), ackHops...)
	checkTrace(t, rec, caller, hops)
}

// With telemetry.traces: otlp, a message's spans reach the collector by the
// time the instance has stopped: shutdown flushes what is still buffered
// (the batch processor would otherwise wait seconds).
func TestOTLPSpansFlushedOnShutdown(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME"} {
		t.Setenv(k, "")
	}
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
	rcv := otlptest.NewHTTP(t)
	ta := startApp(t, func(c *config.Config) {
		c.InstanceID = "otlp-inst"
		c.Telemetry.Traces = "otlp"
		c.Telemetry.OTLPEndpoint = rcv.URL
	})
	alice := ta.client(t, "urn:sm:user:alice")
	if _, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the pipeline to handle the message", func() bool {
		return testutil.ToFloat64(ta.app.Metrics().PipelineHandled.WithLabelValues("ok")) >= 1
	})
	ta.stop()
	names := map[string]bool{}
	for _, s := range rcv.Spans() {
		names[s.Name] = true
		if s.Resource["service.instance.id"] != "otlp-inst" {
			t.Errorf("span %q: resource %v", s.Name, s.Resource)
		}
	}
	for _, want := range []string{"POST /v1/messages", "accept", "store write", "route local", "presence lookup"} {
		if !names[want] {
			t.Errorf("span %q did not reach the collector; got %v", want, names)
		}
	}
}
