package observability

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/pkg/client"
)

const testSecret = "observability-test-secret-0123456789-abcdef"

// instance is one instance of the service running in the test process,
// with every role, on random loopback ports.
type instance struct {
	cfg    config.Config
	app    *app.App
	apiURL string
	wsURL  string
	opsURL string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startInstance runs an instance on the embedded default (mutate may move
// it elsewhere) with a fresh data dir; it stops when the test ends.
func startInstance(t *testing.T, mutate func(*config.Config)) *instance {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.API.Listen = "127.0.0.1:0"
	cfg.Realtime.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = "127.0.0.1:0"
	cfg.Admin.Socket = "-"
	cfg.Realtime.MaxConnsPerIP = 0
	cfg.Realtime.ConnectRatePerIP, cfg.Realtime.ConnectRatePerUser = 0, 0
	cfg.API.RateLimit = 0
	cfg.JWTSecret = testSecret
	if mutate != nil {
		mutate(&cfg)
	}
	cfg.FillDefaults()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	in := &instance{cfg: cfg, app: a, cancel: cancel, done: make(chan error, 1),
		apiURL: "http://" + a.APIAddr(), wsURL: "ws://" + a.WSAddr(), opsURL: "http://" + a.OpsAddr()}
	go func() { in.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		in.once.Do(func() {
			cancel()
			if err := <-in.done; err != nil {
				t.Errorf("instance run: %v", err)
			}
		})
	})
	return in
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// client is a client of the instance authenticated as sub.
func (in *instance) client(t *testing.T, sub string) *client.Client {
	t.Helper()
	tok, err := auth.Sign([]byte(testSecret), sub, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &client.Client{APIURL: in.apiURL, WSURL: in.wsURL, Token: tok}
}

// traffic makes the series that exist only once something happened: a
// live message delivered and acknowledged over a WebSocket, a backlog
// delivered on connect, and a push notification coalesced (two messages
// to an offline recipient within push.coalesce_window).
func (in *instance) traffic(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice := in.client(t, "urn:sm:user:alice")

	bob := in.client(t, "urn:sm:user:bob")
	conn, err := bob.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A message sent before the connection registered comes as its
	// backlog: send until one was delivered live.
	poll(t, "a live delivery to bob", func() bool {
		acc, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("live")})
		if err != nil {
			t.Fatal(err)
		}
		for {
			env, err := conn.Next(ctx)
			if err != nil {
				t.Fatalf("bob's message %s: %v", acc.ID, err)
			}
			if err := conn.Ack(ctx, env.ID); err != nil {
				t.Fatal(err)
			}
			if env.ID == acc.ID {
				break
			}
		}
		return hasSeries(scrape(t, in.opsURL), "routing_websocket_messages_sent_total", "kind", "live")
	})

	// Two messages to carol, offline: a push for the first, the second
	// coalesced into its window.
	for range 2 {
		if _, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:carol", Payload: []byte("offline")}); err != nil {
			t.Fatal(err)
		}
	}
	// dave connects after a message was stored for him: a backlog.
	acc, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:dave", Payload: []byte("backlog")})
	if err != nil {
		t.Fatal(err)
	}
	dave := in.client(t, "urn:sm:user:dave")
	poll(t, "dave's message stored", func() bool {
		p, err := dave.Fetch(ctx, "", 10)
		return err == nil && len(p.Messages) == 1
	})
	dconn, err := dave.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer dconn.Close()
	if env, err := dconn.Next(ctx); err != nil || env.ID != acc.ID {
		t.Fatalf("dave's backlog: %v %v, want %s", env.ID, err, acc.ID)
	}
	if err := dconn.Ack(ctx, acc.ID); err != nil {
		t.Fatal(err)
	}
	poll(t, "a backlog delivery and a push outcome", func() bool {
		fams := scrape(t, in.opsURL)
		return hasSeries(fams, "routing_websocket_messages_sent_total", "kind", "backlog") &&
			fams["routing_push_notifications_total"] != nil
	})
}

// hasSeries reports whether the family name has a series whose label is
// value.
func hasSeries(fams map[string]*dto.MetricFamily, name, label, value string) bool {
	f := fams[name]
	if f == nil {
		return false
	}
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if l.GetName() == label && l.GetValue() == value {
				return true
			}
		}
	}
	return false
}

// poll waits until cond holds, failing the test past 20 seconds.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !eventually(20*time.Second, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// eventually reports whether cond held within d, checking it every 20 ms.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// scrape reads the instance's /metrics from its operations listener.
func scrape(t *testing.T, opsURL string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(opsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// seriesNames returns the names a query may use for the families: a
// counter's or gauge's own name, and a histogram's or summary's _sum and
// _count (and its _bucket, or its name for the quantiles).
func seriesNames(fams map[string]*dto.MetricFamily) map[string]bool {
	names := map[string]bool{}
	for name, f := range fams {
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	return names
}

// namedQuery is a PromQL expression and where it comes from.
type namedQuery struct {
	where string
	expr  string
}

// grafanaVars are the dashboard's variables as the tests substitute them:
// every instance, and a rate window of a minute.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*")

// dashboardQueries returns every query of dashboard.json, Grafana's
// variables substituted: the panels' targets, and the selectors of the
// query variables (label_values(selector, label)).
func dashboardQueries(t *testing.T) []namedQuery {
	t.Helper()
	b, err := os.ReadFile(DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", DashboardFile, err)
	}
	var qs []namedQuery
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			qs = append(qs, namedQuery{fmt.Sprintf("panel %q query %s", p.Title, tg.RefID), substitute(t, tg.Expr)})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		inner, ok := strings.CutPrefix(q, "label_values(")
		i := strings.LastIndex(inner, ",")
		if !ok || i < 0 || !strings.HasSuffix(inner, ")") {
			t.Fatalf("variable %s: query %q is not label_values(selector, label)", v.Name, q)
		}
		qs = append(qs, namedQuery{"variable " + v.Name, substitute(t, inner[:i])})
	}
	if len(qs) == 0 {
		t.Fatalf("%s has no queries", DashboardFile)
	}
	return qs
}

// substitute replaces Grafana's variables in expr and fails on any other.
func substitute(t *testing.T, expr string) string {
	t.Helper()
	out := grafanaVars.Replace(expr)
	if strings.Contains(out, "$") {
		t.Fatalf("query %q uses a variable the tests do not know", expr)
	}
	return out
}

// alertRules is alerts.yaml.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readAlerts(t *testing.T) alertRules {
	t.Helper()
	b, err := os.ReadFile("alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var r alertRules
	if err := yaml.Unmarshal(b, &r); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	return r
}

// alertQueries returns the expression of every alert of alerts.yaml.
func alertQueries(t *testing.T) []namedQuery {
	t.Helper()
	var qs []namedQuery
	for _, g := range readAlerts(t).Groups {
		for _, r := range g.Rules {
			qs = append(qs, namedQuery{"alert " + r.Alert, r.Expr})
		}
	}
	if len(qs) == 0 {
		t.Fatal("alerts.yaml has no rules")
	}
	return qs
}

// tool returns the path of a Prometheus program, or skips the test.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := filepath.Join("/usr/bin", name); fileExists(p) {
		return p
	}
	t.Skipf("%s is not installed: install Debian's prometheus package (apt-get install prometheus; .ci/run does)", name)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
