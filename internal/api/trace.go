package api

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Trace wraps h, which serves rt's routes, with an HTTP server span per
// request that continues the caller's W3C traceparent, named by method and
// route ("POST /v1/messages"; unknown paths are "unknown", never the raw
// path). The WebSocket upgrade has its own span (realtime), and the
// operations endpoints none. With tp nil or a no-op provider it returns h.
func Trace(h http.Handler, rt *Router, tp trace.TracerProvider) http.Handler {
	if telemetry.Tracer(tp, "api") == nil {
		return h
	}
	return otelhttp.NewHandler(h, "http",
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(telemetry.Propagator),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()), // Prometheus has the request metrics
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return r.Method + " " + rt.routeOf(r.URL.Path)
		}),
		otelhttp.WithFilter(func(r *http.Request) bool {
			switch r.URL.Path {
			case "/v1/connect", "/healthz", "/readyz", "/metrics":
				return false
			}
			return true
		}),
	)
}

// routeOf is the route that serves path, "unknown" when none does.
func (rt *Router) routeOf(path string) string {
	if _, ok := rt.routes[path]; ok {
		return path
	}
	return "unknown"
}
