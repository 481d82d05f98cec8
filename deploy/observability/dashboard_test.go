package observability

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/go-routing-service/routingservice/internal/config"
)

// dashboard.json is what Dashboard builds: edit dashboard.go and run
// go generate, never the file.
func TestDashboardFileIsGenerated(t *testing.T) {
	want, err := DashboardJSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from Dashboard(): run go generate ./deploy/observability", DashboardFile)
	}
}

// metricNames returns the metric names expr selects; a selector without a
// plain name is an error (the test could not check it).
func metricNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	var bad error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				if m.Type != labels.MatchEqual {
					bad = errNoName(vs.String())
				}
				name = m.Value
			}
		}
		if name == "" {
			bad = errNoName(vs.String())
		}
		names = append(names, name)
		return nil
	})
	return names, bad
}

type errNoName string

func (e errNoName) Error() string { return "selector " + string(e) + " names no single metric" }

func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`sum by (le) (rate(a_bucket{x=~"y"}[1m]))`, []string{"a_bucket"}},
		{`a / (b > 0) > 0.9 and on (job) c{state="dead"}`, []string{"a", "b", "c"}},
		{`{__name__="a", job="j"}`, []string{"a"}},
		{`histogram_quantile(0.5, sum by (le, job) (rate(x_bucket[5m]))) > bool 1`, []string{"x_bucket"}},
	} {
		got, err := metricNames(c.expr)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %v, %v; want %v", c.expr, got, err, c.want)
		}
	}
	for _, expr := range []string{`{job="a"}`, `{__name__=~"routing_.*"}`, `rate(a[5m]`} {
		if got, err := metricNames(expr); err == nil {
			t.Errorf("metricNames(%q) = %v, want an error", expr, got)
		}
	}
}

// storeTableMetrics is the prefix of the metrics only an instance on the
// PostgreSQL store exports.
const storeTableMetrics = "routing_store_table_"

// Every metric a dashboard query or an alert names is exported by a
// running instance: one with every role on the embedded default after
// some traffic and, for the PostgreSQL store's table metrics, one on
// PostgreSQL. A renamed metric fails here, not on a dashboard.
func TestQueriesUseExportedMetrics(t *testing.T) {
	queries := append(dashboardQueries(t), alertQueries(t)...)
	used := map[string][]string{} // metric -> where
	for _, q := range queries {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Errorf("%s: %q: %v", q.where, q.expr, err)
			continue
		}
		for _, n := range names {
			used[n] = append(used[n], q.where)
		}
	}

	in := startInstance(t, nil)
	in.traffic(t)
	exported := seriesNames(scrape(t, in.opsURL))
	var pgOnly []string
	for name, where := range used {
		switch {
		case exported[name]:
		case strings.HasPrefix(name, storeTableMetrics):
			pgOnly = append(pgOnly, name)
		default:
			t.Errorf("%s (%s) is not exported by an instance with every role on the embedded default", name, strings.Join(where, "; "))
		}
	}
	slices.Sort(pgOnly)
	if len(pgOnly) == 0 {
		t.Fatalf("no query uses the PostgreSQL store's %s* metrics", storeTableMetrics)
	}

	t.Run("postgres", func(t *testing.T) {
		url := os.Getenv("ROUTING_TEST_POSTGRES_URL")
		if url == "" {
			t.Skipf("set ROUTING_TEST_POSTGRES_URL to check %v on an instance on PostgreSQL", pgOnly)
		}
		schema := pgSchema(t, url)
		pg := startInstance(t, func(c *config.Config) {
			c.Store.Type = "postgres"
			c.Store.Postgres.Schema = schema
			c.Store.Postgres.VacuumInterval = 100 * time.Millisecond
			c.DatabaseURL = url
		})
		// routing_store_table_seconds_since_vacuum shows once a table was
		// vacuumed: vacuum one, as autovacuum or the store would.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "VACUUM "+pgx.Identifier{schema, "messages"}.Sanitize()); err != nil {
			t.Fatal(err)
		}
		var missing []string
		ok := eventually(20*time.Second, func() bool {
			exported := seriesNames(scrape(t, pg.opsURL))
			missing = missing[:0]
			for _, name := range pgOnly {
				if !exported[name] {
					missing = append(missing, name)
				}
			}
			return len(missing) == 0
		})
		if !ok {
			t.Fatalf("%v not exported by an instance on PostgreSQL", missing)
		}
	})
}

// pgSchema returns a fresh schema name on url, dropped when the test ends
// (after the instances using it stopped).
func pgSchema(t *testing.T, url string) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "obs_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}
