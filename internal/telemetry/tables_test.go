package telemetry

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestStoreTableMetrics(t *testing.T) {
	m := NewMetrics()
	m.RegisterStoreTables(func() []TableStat {
		return []TableStat{
			{Table: "messages", LiveRows: 300, DeadRows: 100, Bytes: 8192, SinceVacuum: 1500 * time.Millisecond, Vacuums: 7},
			{Table: "tombstones", SinceVacuum: -1},
		}
	})
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			key := f.GetName()
			for _, l := range mt.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			got[key] = value(mt)
		}
	}
	for k, want := range map[string]float64{
		"routing_store_table_rows,state=live,table=messages":      300,
		"routing_store_table_rows,state=dead,table=messages":      100,
		"routing_store_table_dead_ratio,table=messages":           0.25,
		"routing_store_table_bytes,table=messages":                8192,
		"routing_store_table_seconds_since_vacuum,table=messages": 1.5,
		"routing_store_table_vacuums_total,table=messages":        7,
		"routing_store_table_dead_ratio,table=tombstones":         0,
	} {
		if v, ok := got[k]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", k, v, ok, want)
		}
	}
	if _, ok := got["routing_store_table_seconds_since_vacuum,table=tombstones"]; ok {
		t.Error("a table never vacuumed has a time since its last vacuum")
	}
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	}
	return -1
}
