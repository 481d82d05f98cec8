package telemetry

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TableStat is what the store last read of one of its tables' statistics
// (PostgreSQL's pg_stat_user_tables).
type TableStat struct {
	Table    string
	LiveRows int64
	DeadRows int64
	Bytes    int64
	// SinceVacuum is the time since the table's last vacuum by anyone;
	// negative when it never was.
	SinceVacuum time.Duration
	// Vacuums counts the vacuums the store ran on the table.
	Vacuums int64
}

// RegisterStoreTables exports the statistics stats returns at each scrape:
// rows live and dead, the dead ratio, the bytes, the seconds since the
// last vacuum and the store's own vacuums, per table.
func (m *Metrics) RegisterStoreTables(stats func() []TableStat) {
	m.Registry.MustRegister(&tableCollector{stats: stats})
}

var (
	tableRows = prometheus.NewDesc("routing_store_table_rows",
		"Rows of a store table by state (live, dead: deleted or updated, not yet vacuumed), from the database's statistics.",
		[]string{"table", "state"}, nil)
	tableDeadRatio = prometheus.NewDesc("routing_store_table_dead_ratio",
		"Dead rows of a store table over all its rows (0 when empty).", []string{"table"}, nil)
	tableBytes = prometheus.NewDesc("routing_store_table_bytes",
		"Size of a store table with its indexes.", []string{"table"}, nil)
	tableSinceVacuum = prometheus.NewDesc("routing_store_table_seconds_since_vacuum",
		"Seconds since a store table was last vacuumed (by the store, autovacuum or anyone); absent if it never was.",
		[]string{"table"}, nil)
	tableVacuums = prometheus.NewDesc("routing_store_table_vacuums_total",
		"Vacuums this instance's store ran on a table.", []string{"table"}, nil)
)

type tableCollector struct {
	stats func() []TableStat
}

func (c *tableCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tableRows, tableDeadRatio, tableBytes, tableSinceVacuum, tableVacuums} {
		ch <- d
	}
}

func (c *tableCollector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range c.stats() {
		ratio := 0.0
		if all := t.LiveRows + t.DeadRows; all > 0 {
			ratio = float64(t.DeadRows) / float64(all)
		}
		ch <- prometheus.MustNewConstMetric(tableRows, prometheus.GaugeValue, float64(t.LiveRows), t.Table, "live")
		ch <- prometheus.MustNewConstMetric(tableRows, prometheus.GaugeValue, float64(t.DeadRows), t.Table, "dead")
		ch <- prometheus.MustNewConstMetric(tableDeadRatio, prometheus.GaugeValue, ratio, t.Table)
		ch <- prometheus.MustNewConstMetric(tableBytes, prometheus.GaugeValue, float64(t.Bytes), t.Table)
		if t.SinceVacuum >= 0 {
			ch <- prometheus.MustNewConstMetric(tableSinceVacuum, prometheus.GaugeValue, t.SinceVacuum.Seconds(), t.Table)
		}
		ch <- prometheus.MustNewConstMetric(tableVacuums, prometheus.CounterValue, float64(t.Vacuums), t.Table)
	}
}
