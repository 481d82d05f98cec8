// Package telemetry holds the service's Prometheus metrics and logging setup.
package telemetry

import (
	"log/slog"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the service's own Prometheus metrics, on a registry of their
// own (so several instances can run in one process, as tests do).
type Metrics struct {
	Registry *prometheus.Registry

	HTTPRequests        *prometheus.CounterVec   // route, code
	HTTPDuration        *prometheus.HistogramVec // route
	MessagesAccepted    *prometheus.CounterVec   // ephemeral
	IdempotentHits      prometheus.Counter
	RoutingDeferred     prometheus.Counter     // accepted, routing event not published: left to the sweep
	SendsRefused        *prometheus.CounterVec // reason: backlog, recipient_queue_full
	IngressBacklog      prometheus.Gauge
	IngressLocal        *prometheus.CounterVec // result: routed, full, requeued
	Rerouted            prometheus.Counter     // routed by the sweep of unrouted envelopes
	RouteMarkFailed     prometheus.Counter
	PipelineHandled     *prometheus.CounterVec // result: ok, retry, dead
	PipelineDuration    prometheus.Histogram
	DeliveriesPublished prometheus.Counter
	DeliveriesLocal     prometheus.Counter
	PushRequested       prometheus.Counter
	PushUnacked         prometheus.Counter // pushes for messages routed live but not acknowledged in time
	UnackedDropped      prometheus.Counter // live-routed messages not watched because the schedule was full
	WSConnections       prometheus.Gauge
	WSMaxConnections    prometheus.Gauge       // realtime.max_conns of this instance's realtime role
	WSMessagesSent      *prometheus.CounterVec // kind: backlog, live
	WSDropped           *prometheus.CounterVec // reason
	WSAcks              prometheus.Counter
	MessagesAcked       prometheus.Counter
	DeadLettered        *prometheus.CounterVec // queue: ingress, delivery
	DeadReplayed        *prometheus.CounterVec // queue
	DeadPurged          *prometheus.CounterVec // queue
	DeliveryLatency     prometheus.Histogram   // accepted by the API to written to a WebSocket
	PipelineLag         prometheus.Gauge       // age of the oldest stored message not yet routed
	StorePending        prometheus.Gauge       // messages stored and not acknowledged
	ReceivePaused       *prometheus.GaugeVec   // queue
	BackendUp           *prometheus.GaugeVec   // backend: bus, store, presence
}

// NewMetrics makes the metrics and registers them, with the Go and process
// collectors, on a new registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "routing_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
		MessagesAccepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_messages_accepted_total", Help: "Messages accepted by the API (202).",
		}, []string{"ephemeral"}),
		IdempotentHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_idempotent_replays_total", Help: "Sends answered from an earlier send with the same idempotency key.",
		}),
		SendsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_sends_refused_total", Help: "Sends refused before anything was stored, by reason (backlog: the pipeline is behind, answered 503; recipient_queue_full: the recipient has store.max_pending_per_recipient pending messages, answered 429).",
		}, []string{"reason"}),
		IngressLocal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_ingress_local_total", Help: "Accepted messages handed to this instance's pipeline in process, without the ingress topic, by result: routed; full (the hand-off was full: sent over the ingress topic); requeued (routing failed: sent over the ingress topic to be retried).",
		}, []string{"result"}),
		IngressBacklog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "routing_ingress_backlog", Help: "Ingress messages waiting for the pipeline or being handled, as last read by this API instance.",
		}),
		RoutingDeferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_routing_deferred_total", Help: "Messages stored and accepted whose routing event could not be published; the sweep of unrouted messages routes them.",
		}),
		Rerouted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_rerouted_total", Help: "Stored messages routed by the sweep because their routing event was lost or never published.",
		}),
		RouteMarkFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_route_mark_failed_total", Help: "Batches routed whose routed mark could not be stored (the sweep may route them again).",
		}),
		PipelineHandled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_pipeline_messages_total", Help: "Ingress messages handled by the pipeline, by result.",
		}, []string{"result"}),
		PipelineDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "routing_pipeline_duration_seconds", Help: "Time to store and route one ingress message.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		DeliveriesPublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_deliveries_published_total", Help: "Delivery events published to other instances.",
		}),
		DeliveriesLocal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_deliveries_local_total", Help: "Delivery events handed to this instance's connections in process.",
		}),
		PushRequested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_push_requested_total", Help: "Push notifications requested: for offline recipients, and for messages routed live but not acknowledged in time.",
		}),
		PushUnacked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_push_unacked_total", Help: "Push notifications requested for messages routed to a live connection but not acknowledged within push.unacked_after.",
		}),
		UnackedDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_push_unacked_dropped_total", Help: "Messages routed to a live connection that were not watched for an acknowledgement because the schedule was full.",
		}),
		WSConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "routing_websocket_connections", Help: "Open WebSocket connections.",
		}),
		WSMaxConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "routing_websocket_max_connections", Help: "The WebSocket connections this instance accepts at most (realtime.max_conns); 0 without the realtime role or without a limit.",
		}),
		WSMessagesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_websocket_messages_sent_total", Help: "Messages written to WebSockets, by kind (backlog, live).",
		}, []string{"kind"}),
		WSDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_websocket_closed_total", Help: "WebSockets closed by the server, by reason.",
		}, []string{"reason"}),
		WSAcks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_websocket_acks_total", Help: "Ack frames received over WebSockets.",
		}),
		MessagesAcked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routing_messages_acked_total", Help: "Messages deleted from the store by acknowledgements.",
		}),
		DeadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_dead_lettered_total", Help: "Messages this instance moved to a dead-letter queue, by queue (ingress, delivery).",
		}, []string{"queue"}),
		DeadReplayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_dead_letter_replayed_total", Help: "Dead-lettered messages put back on their topic through this instance's admin socket, by queue.",
		}, []string{"queue"}),
		DeadPurged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routing_dead_letter_purged_total", Help: "Dead-lettered messages deleted through this instance's admin socket, by queue.",
		}, []string{"queue"}),
		DeliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "routing_delivery_latency_seconds", Help: "Time from a message's acceptance by the API to its live frame written to a WebSocket on this instance.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		PipelineLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "routing_pipeline_lag_seconds", Help: "Age of the oldest stored message the pipeline has not routed yet (0 when none), as last read by this pipeline instance; messages younger than twice the delay of routed marks (2 s at most) are not looked at.",
		}),
		StorePending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "routing_store_pending_messages", Help: "Messages in the store waiting for their recipients' acknowledgement (all recipients), as last read by this pipeline instance.",
		}),
		ReceivePaused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "routing_receive_paused", Help: "1 while a consumer holds its messages and takes no new ones because a backend it needs is down, by queue.",
		}, []string{"queue"}),
		BackendUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "routing_backend_up", Help: "1 when the backend answered this instance's last readiness check, 0 when it failed, by backend.",
		}, []string{"backend"}),
	}
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.HTTPRequests, m.HTTPDuration, m.MessagesAccepted, m.IdempotentHits, m.PipelineHandled,
		m.RoutingDeferred, m.Rerouted, m.RouteMarkFailed, m.SendsRefused, m.IngressBacklog, m.IngressLocal,
		m.PipelineDuration, m.DeliveriesPublished, m.DeliveriesLocal, m.PushRequested, m.PushUnacked, m.UnackedDropped, m.WSConnections, m.WSMaxConnections,
		m.WSMessagesSent, m.WSDropped, m.WSAcks, m.MessagesAcked,
		m.DeadLettered, m.DeadReplayed, m.DeadPurged, m.DeliveryLatency, m.PipelineLag, m.StorePending, m.ReceivePaused, m.BackendUp,
		buildInfo(),
	)
	// Both queues show from the start, at zero, so alerts on rate() see them.
	for _, q := range []string{"ingress", "delivery"} {
		m.DeadLettered.WithLabelValues(q)
		m.DeadReplayed.WithLabelValues(q)
		m.DeadPurged.WithLabelValues(q)
		m.ReceivePaused.WithLabelValues(q)
	}
	// So do the reasons a send is refused.
	for _, r := range []string{"backlog", "recipient_queue_full", "sender_quota_exceeded"} {
		m.SendsRefused.WithLabelValues(r)
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// NewLogger makes the process logger: text or json on stderr at level.
// Records logged inside a traced operation carry trace_id and span_id.
func NewLogger(level, format string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	o := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(WithTraceIDs(slog.NewJSONHandler(os.Stderr, o)))
	}
	return slog.New(WithTraceIDs(slog.NewTextHandler(os.Stderr, o)))
}
