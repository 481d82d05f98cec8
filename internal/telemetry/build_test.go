package telemetry

import (
	"testing"

	"github.com/go-routing-service/routingservice/internal/version"
)

func TestBuildInfoMetric(t *testing.T) {
	m := NewMetrics()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := version.Get()
	for _, f := range families {
		if f.GetName() != "routing_build_info" {
			continue
		}
		if len(f.Metric) != 1 || f.Metric[0].GetGauge().GetValue() != 1 {
			t.Fatalf("routing_build_info: %v", f.Metric)
		}
		labels := map[string]string{}
		for _, l := range f.Metric[0].Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["version"] != want.Version || labels["commit"] != want.Commit || labels["go_version"] != want.GoVersion {
			t.Fatalf("labels %v, want %+v", labels, want)
		}
		return
	}
	t.Fatal("routing_build_info is not registered")
}
