package realtime

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Why a WebSocket upgrade was refused: the reason label of
// routing_websocket_refused_total.
const (
	refusedOrigin          = "origin"          // 403: Origin not allowed
	refusedHost            = "host"            // 403: a browser's Host not allowed
	refusedUnauthenticated = "unauthenticated" // 401: no token, or a token that failed verification
	refusedRateIP          = "rate_ip"         // 429: attempts without a valid token over the address's budget
	refusedRateUser        = "rate_user"       // 429: the user's connect rate
	refusedConnsPerUser    = "conns_per_user"  // 429: the user's connections on this instance
	refusedConnsPerIP      = "conns_per_ip"    // 429: the address's connections on this instance
	refusedMaxConns        = "max_conns"       // 503: this instance's connections
	refusedShuttingDown    = "shutting_down"   // 503: the instance is draining
	refusedHandshake       = "handshake"       // 400/426: not a valid WebSocket handshake
)

var refusedReasons = []string{
	refusedOrigin, refusedHost, refusedUnauthenticated, refusedRateIP, refusedRateUser,
	refusedConnsPerUser, refusedConnsPerIP, refusedMaxConns, refusedShuttingDown, refusedHandshake,
}

// newRefusedCounter returns routing_websocket_refused_total registered on
// m's registry (the one already there when another server of the process
// registered it first); nil without metrics. Every reason is present from
// the start, at zero, so that rate() alerts see them.
func newRefusedCounter(m *telemetry.Metrics) *prometheus.CounterVec {
	if m == nil || m.Registry == nil {
		return nil
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "routing_websocket_refused_total",
		Help: "WebSocket upgrades refused, by reason (origin, host, unauthenticated, rate_ip, rate_user, conns_per_user, conns_per_ip, max_conns, shutting_down, handshake).",
	}, []string{"reason"})
	if err := m.Registry.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			panic(err) // a programming error: another metric of that name and other labels
		}
		c = are.ExistingCollector.(*prometheus.CounterVec)
	}
	for _, r := range refusedReasons {
		c.WithLabelValues(r)
	}
	return c
}

// refused counts a refused upgrade.
func (s *Server) refused(reason string) {
	if s.refusals != nil {
		s.refusals.WithLabelValues(reason).Inc()
	}
}
