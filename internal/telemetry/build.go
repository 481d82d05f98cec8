package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/go-routing-service/routingservice/internal/version"
)

// buildInfo is the constant 1 labelled with the running build, so that
// dashboards can tell versions apart during a rollout.
func buildInfo() prometheus.Gauge {
	v := version.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "routing_build_info",
		Help:        "The running build: always 1, labelled with version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": v.Version, "commit": v.Commit, "go_version": v.GoVersion},
	})
	g.Set(1)
	return g
}
