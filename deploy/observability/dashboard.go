package observability

import (
	"encoding/json"

	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

//go:generate go run ./gendashboard

// DashboardFile is the dashboard as Grafana imports it, generated from
// Dashboard: `go generate ./deploy/observability` writes it, and a test
// fails while the file and Dashboard differ.
const DashboardFile = "dashboard.json"

// DashboardUID is the dashboard's uid: importing the file again replaces
// the dashboard instead of adding a copy.
const DashboardUID = "routingservice-overview"

// sel is the label selector every query applies: the instances picked in
// the dashboard's instance variable.
const sel = `instance=~"$instance"`

// query is one query of a panel: a PromQL expression and its legend.
type query struct {
	expr   string
	legend string
}

// panel is one time series panel.
type panel struct {
	title   string
	desc    string
	unit    string
	queries []query
}

// row is a row of panels.
type row struct {
	title  string
	panels []panel
}

// rows is the dashboard's content, top to bottom. Grafana's variables in
// the expressions: $instance (the instance variable) and $__rate_interval
// (Grafana's rate window for the scrape interval and the panel's step).
var rows = []row{
	{"Traffic", []panel{
		{
			title: "Accepted per second, by kind",
			desc:  "Messages answered 202 by the API (routing_messages_accepted_total), ephemeral or durable.",
			unit:  "reqps",
			queries: []query{
				{`sum by (ephemeral) (rate(routing_messages_accepted_total{` + sel + `}[$__rate_interval]))`, "ephemeral={{ephemeral}}"},
			},
		},
		{
			title: "Delivered per second, by kind",
			desc: "Messages written to WebSockets (routing_websocket_messages_sent_total): live as they are routed, " +
				"or backlog when a connection opens. Ephemeral messages are never stored, so every backlog delivery is durable.",
			unit: "reqps",
			queries: []query{
				{`sum by (kind) (rate(routing_websocket_messages_sent_total{` + sel + `}[$__rate_interval]))`, "{{kind}}"},
				{`sum(rate(routing_messages_acked_total{` + sel + `}[$__rate_interval]))`, "acknowledged"},
			},
		},
		{
			title: "Receipt latency",
			desc:  "From a message's acceptance by the API to its live frame written to the recipient's WebSocket (routing_delivery_latency_seconds).",
			unit:  "s",
			queries: []query{
				{`histogram_quantile(0.5, sum by (le) (rate(routing_delivery_latency_seconds_bucket{` + sel + `}[$__rate_interval])))`, "p50"},
				{`histogram_quantile(0.9, sum by (le) (rate(routing_delivery_latency_seconds_bucket{` + sel + `}[$__rate_interval])))`, "p90"},
				{`histogram_quantile(0.99, sum by (le) (rate(routing_delivery_latency_seconds_bucket{` + sel + `}[$__rate_interval])))`, "p99"},
			},
		},
		{
			title: "HTTP requests per second, by status",
			desc:  "API requests by status code (routing_http_requests_total); 503 means nothing was accepted.",
			unit:  "reqps",
			queries: []query{
				{`sum by (code) (rate(routing_http_requests_total{` + sel + `}[$__rate_interval]))`, "{{code}}"},
			},
		},
	}},
	{"Pipeline", []panel{
		{
			title: "Pipeline lag",
			desc:  "Age of the oldest stored message not routed yet, as each pipeline instance last read it (routing_pipeline_lag_seconds).",
			unit:  "s",
			queries: []query{
				{`max by (instance) (routing_pipeline_lag_seconds{` + sel + `})`, "{{instance}}"},
			},
		},
		{
			title: "Stored, not acknowledged",
			desc:  "Messages in the store waiting for their recipients' acknowledgement (routing_store_pending_messages), and the ingress backlog an API instance last read (routing_ingress_backlog).",
			unit:  "short",
			queries: []query{
				{`max(routing_store_pending_messages{` + sel + `})`, "pending in the store"},
				{`max(routing_ingress_backlog{` + sel + `})`, "ingress backlog"},
			},
		},
		{
			title: "Receive paused",
			desc:  "1 while a consumer holds its messages because a backend it needs is down (routing_receive_paused), by instance and queue.",
			unit:  "short",
			queries: []query{
				{`max by (instance, queue) (routing_receive_paused{` + sel + `})`, "{{instance}} {{queue}}"},
			},
		},
		{
			title: "Backends up",
			desc:  "1 when the backend answered the instance's last check, 0 when it failed (routing_backend_up).",
			unit:  "short",
			queries: []query{
				{`min by (instance, backend) (routing_backend_up{` + sel + `})`, "{{instance}} {{backend}}"},
			},
		},
		{
			title: "Sends refused per second, by reason",
			desc:  "Sends refused before anything was stored (routing_sends_refused_total): backlog (503, the pipeline is behind), recipient_queue_full and sender_quota_exceeded (429).",
			unit:  "reqps",
			queries: []query{
				{`sum by (reason) (rate(routing_sends_refused_total{` + sel + `}[$__rate_interval]))`, "{{reason}}"},
			},
		},
		{
			title: "Dead letters",
			desc:  "Messages moved to a dead-letter queue (routing_dead_lettered_total), by queue, per interval.",
			unit:  "short",
			queries: []query{
				{`sum by (queue) (increase(routing_dead_lettered_total{` + sel + `}[$__rate_interval]))`, "{{queue}}"},
			},
		},
	}},
	{"Push", []panel{
		{
			title: "Push notifications per second, by platform and outcome",
			desc:  "routing_push_notifications_total: sent, coalesced, dropped, failed, removed; platform all for outcomes decided before the recipient's targets are known.",
			unit:  "reqps",
			queries: []query{
				{`sum by (platform, outcome) (rate(routing_push_notifications_total{` + sel + `}[$__rate_interval]))`, "{{platform}} {{outcome}}"},
			},
		},
		{
			title: "Push requests per second",
			desc:  "Pushes requested by the pipeline (routing_push_requested_total), of which for live messages left unacknowledged (routing_push_unacked_total).",
			unit:  "reqps",
			queries: []query{
				{`sum(rate(routing_push_requested_total{` + sel + `}[$__rate_interval]))`, "requested"},
				{`sum(rate(routing_push_unacked_total{` + sel + `}[$__rate_interval]))`, "unacknowledged live"},
			},
		},
	}},
	{"Connections", []panel{
		{
			title: "WebSocket connections",
			desc:  "Open connections per instance (routing_websocket_connections) against the instance's limit, realtime.max_conns (routing_websocket_max_connections).",
			unit:  "short",
			queries: []query{
				{`sum by (instance) (routing_websocket_connections{` + sel + `})`, "{{instance}}"},
				{`max by (instance) (routing_websocket_max_connections{` + sel + `})`, "{{instance}} limit"},
			},
		},
		{
			title: "Refused connections per second, by reason",
			desc:  "WebSocket upgrades refused (routing_websocket_refused_total): origin, host, unauthenticated, rate_ip, rate_user, conns_per_user, conns_per_ip, max_conns, shutting_down, handshake.",
			unit:  "reqps",
			queries: []query{
				{`sum by (reason) (rate(routing_websocket_refused_total{` + sel + `}[$__rate_interval]))`, "{{reason}}"},
			},
		},
	}},
	{"Store tables (PostgreSQL)", []panel{
		{
			title: "Dead rows",
			desc:  "Dead rows (deleted or updated, not yet vacuumed) of the store's high-churn tables (routing_store_table_rows) and their share of all rows (routing_store_table_dead_ratio). PostgreSQL stores only.",
			unit:  "short",
			queries: []query{
				{`max by (table) (routing_store_table_rows{state="dead", ` + sel + `})`, "{{table}}"},
			},
		},
		{
			title: "Dead row ratio",
			desc:  "Dead rows over all rows of each high-churn table (routing_store_table_dead_ratio). PostgreSQL stores only.",
			unit:  "percentunit",
			queries: []query{
				{`max by (table) (routing_store_table_dead_ratio{` + sel + `})`, "{{table}}"},
			},
		},
		{
			title: "Time since the last vacuum",
			desc:  "Since each table was last vacuumed, by the store, autovacuum or anyone (routing_store_table_seconds_since_vacuum; absent for a table never vacuumed). PostgreSQL stores only.",
			unit:  "s",
			queries: []query{
				{`min by (table) (routing_store_table_seconds_since_vacuum{` + sel + `})`, "{{table}}"},
			},
		},
	}},
	{"Go runtime", []panel{
		{
			title: "Goroutines",
			unit:  "short",
			queries: []query{
				{`go_goroutines{` + sel + `}`, "{{instance}}"},
			},
		},
		{
			title: "Memory",
			desc:  "Heap in use (go_memstats_heap_inuse_bytes) and resident memory (process_resident_memory_bytes).",
			unit:  "bytes",
			queries: []query{
				{`go_memstats_heap_inuse_bytes{` + sel + `}`, "{{instance}} heap"},
				{`process_resident_memory_bytes{` + sel + `}`, "{{instance}} resident"},
			},
		},
		{
			title: "Garbage collections per second",
			unit:  "short",
			queries: []query{
				{`rate(go_gc_duration_seconds_count{` + sel + `}[$__rate_interval])`, "{{instance}}"},
			},
		},
		{
			title: "CPU",
			desc:  "CPU seconds per second of each process (process_cpu_seconds_total).",
			unit:  "short",
			queries: []query{
				{`rate(process_cpu_seconds_total{` + sel + `}[$__rate_interval])`, "{{instance}}"},
			},
		},
		{
			title: "Open file descriptors",
			desc:  "Each WebSocket holds one (process_open_fds), against the process's limit (process_max_fds).",
			unit:  "short",
			queries: []query{
				{`process_open_fds{` + sel + `}`, "{{instance}}"},
				{`process_max_fds{` + sel + `}`, "{{instance}} limit"},
			},
		},
	}},
}

// datasource is the dashboard's data source variable: the Prometheus the
// person importing the dashboard picks.
func datasource() common.DataSourceRef {
	return common.DataSourceRef{Type: ptr("prometheus"), Uid: ptr("${datasource}")}
}

// Dashboard builds the dashboard: one row of time series panels per part
// of the service, every query filtered by the instance variable.
func Dashboard() (dashboard.Dashboard, error) {
	b := dashboard.NewDashboardBuilder("Routing service").
		Uid(DashboardUID).
		Description("Traffic, pipeline, push, connections, PostgreSQL store tables and Go runtime of the routing service. Generated from deploy/observability/dashboard.go.").
		Tags([]string{"routingservice"}).
		Refresh("30s").
		Time("now-1h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").
			Label("Data source").
			Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("instance").
			Label("Instance").
			Datasource(datasource()).
			Query(dashboard.StringOrMap{String: ptr("label_values(routing_build_info, instance)")}).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Multi(true).
			IncludeAll(true).
			AllValue(".*"))
	var id uint32
	for _, r := range rows {
		id++
		b = b.WithRow(dashboard.NewRowBuilder(r.title).Id(id))
		for _, p := range r.panels {
			id++
			pb := timeseries.NewPanelBuilder().
				Id(id).
				Title(p.title).
				Datasource(datasource()).
				Unit(p.unit).
				Height(8).
				Span(8).
				Legend(common.NewVizLegendOptionsBuilder().
					DisplayMode(common.LegendDisplayModeList).
					Placement(common.LegendPlacementBottom).
					ShowLegend(true)).
				Tooltip(common.NewVizTooltipOptionsBuilder().
					Mode(common.TooltipDisplayModeMulti).
					Sort(common.SortOrderDescending))
			if p.desc != "" {
				pb = pb.Description(p.desc)
			}
			for i, q := range p.queries {
				pb = pb.WithTarget(prometheus.NewDataqueryBuilder().
					Datasource(datasource()).
					RefId(string(rune('A' + i))).
					Expr(q.expr).
					LegendFormat(q.legend))
			}
			b = b.WithPanel(pb)
		}
	}
	return b.Build()
}

// DashboardJSON is Dashboard as the file holds it: indented JSON ending in
// a newline.
func DashboardJSON() ([]byte, error) {
	d, err := Dashboard()
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

func ptr[T any](v T) *T { return &v }
