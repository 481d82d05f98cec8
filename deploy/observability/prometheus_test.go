package observability

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/testkit"
)

// prometheusServer is a Prometheus started by a test.
type prometheusServer struct {
	url string
}

// startPrometheus runs the packaged Prometheus on a free loopback port with
// a temporary data dir, the alerting rules of alerts.yaml, and one scrape
// job, "routing", on target (host:port of an operations listener) every
// 500 ms. It stops when the test ends.
func startPrometheus(t *testing.T, target string) *prometheusServer {
	t.Helper()
	bin := tool(t, "prometheus")
	dir := t.TempDir()
	rules, err := filepath.Abs("alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
  evaluation_interval: 500ms
rule_files:
  - %q
scrape_configs:
  - job_name: routing
    static_configs:
      - targets: [%q]
`, rules, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	var logs testkit.Buffer
	cmd := exec.Command(bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
	)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	// Prometheus dies with the test process, even when that one is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Error("prometheus did not stop within 15s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	p := &prometheusServer{url: "http://" + addr}
	ready := eventually(30*time.Second, func() bool {
		select {
		case err := <-exited:
			exited <- err
			return true
		default:
		}
		resp, err := http.Get(p.url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	select {
	case err := <-exited:
		t.Fatalf("prometheus exited: %v\n%s", err, logs.String())
	default:
	}
	if !ready {
		t.Fatalf("prometheus not ready within 30s\n%s", logs.String())
	}
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// apiGet GETs a Prometheus API path and decodes its data into out; it
// returns the API's error, if any.
func (p *prometheusServer) apiGet(t *testing.T, path string, q url.Values, out any) error {
	t.Helper()
	u := p.url + path
	if q != nil {
		u += "?" + q.Encode()
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s", body.Status, body.Error)
	}
	return json.Unmarshal(body.Data, out)
}

// sample is one element of an instant vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query evaluates expr now; the result must be a vector.
func (p *prometheusServer) query(t *testing.T, expr string) ([]sample, error) {
	t.Helper()
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.apiGet(t, "/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", data.ResultType)
	}
	var v []sample
	err := json.Unmarshal(data.Result, &v)
	return v, err
}

// A Prometheus scraping a running instance: the target is up, the rules
// of alerts.yaml load and evaluate without error, every alert expression
// returns an empty vector on the healthy instance (and no alert is
// pending or firing), and every dashboard query returns data, but for the
// PostgreSQL store's (the instance runs on the embedded default).
func TestPrometheusScrapesAnInstance(t *testing.T) {
	tool(t, "prometheus")
	in := startInstance(t, nil)
	in.traffic(t)
	target := strings.TrimPrefix(in.opsURL, "http://")
	prom := startPrometheus(t, target)

	var health string
	up := eventually(30*time.Second, func() bool {
		var data struct {
			ActiveTargets []struct {
				ScrapeURL string `json:"scrapeUrl"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := prom.apiGet(t, "/api/v1/targets", nil, &data); err != nil {
			t.Fatal(err)
		}
		for _, tg := range data.ActiveTargets {
			if strings.Contains(tg.ScrapeURL, target) {
				health = tg.Health + " " + tg.LastError
				return tg.Health == "up"
			}
		}
		return false
	})
	if !up {
		t.Fatalf("target %s not up within 30s: %s", target, health)
	}
	// rate() needs two samples in its window: wait for a few scrapes.
	if !eventually(30*time.Second, func() bool {
		v, err := prom.query(t, `count_over_time(up{job="routing"}[1m]) >= 4`)
		return err == nil && len(v) == 1
	}) {
		t.Fatal("fewer than 4 scrapes within 30s")
	}

	// The rules loaded, and each was evaluated without error.
	alerts := alertQueries(t)
	var rulesState string
	if !eventually(30*time.Second, func() bool {
		var data struct {
			Groups []struct {
				Rules []struct {
					Name           string `json:"name"`
					Health         string `json:"health"`
					LastError      string `json:"lastError"`
					LastEvaluation string `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := prom.apiGet(t, "/api/v1/rules", nil, &data); err != nil {
			t.Fatal(err)
		}
		var n int
		var bad []string
		for _, g := range data.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health != "ok" {
					bad = append(bad, fmt.Sprintf("%s: %s %s", r.Name, r.Health, r.LastError))
				}
			}
		}
		rulesState = fmt.Sprintf("%d rules loaded of %d; not ok: %v", n, len(alerts), bad)
		return n == len(alerts) && len(bad) == 0
	}) {
		t.Fatalf("rules: %s", rulesState)
	}

	for _, q := range alerts {
		v, err := prom.query(t, q.expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
		} else if len(v) != 0 {
			t.Errorf("%s returns %v on a healthy instance, want nothing", q.where, v)
		}
	}
	var active struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := prom.apiGet(t, "/api/v1/alerts", nil, &active); err != nil {
		t.Fatal(err)
	}
	if len(active.Alerts) != 0 {
		t.Errorf("alerts pending or firing on a healthy instance: %+v", active.Alerts)
	}

	for _, q := range dashboardQueries(t) {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Fatalf("%s: %v", q.where, err)
		}
		wantData := true
		for _, n := range names {
			if strings.HasPrefix(n, storeTableMetrics) {
				wantData = false
			}
		}
		var v []sample
		var qerr error
		ok := eventually(10*time.Second, func() bool {
			v, qerr = prom.query(t, q.expr)
			return qerr != nil || !wantData || len(v) > 0
		})
		switch {
		case qerr != nil:
			t.Errorf("%s: %q: %v", q.where, q.expr, qerr)
		case !ok:
			t.Errorf("%s: %q returns no data", q.where, q.expr)
		}
	}
}
