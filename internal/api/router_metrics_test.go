package api

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// A WebSocket session (answered 101) is counted as a request, but its
// length is not a request duration.
func TestSessionsAreNotRequestDurations(t *testing.T) {
	m := telemetry.NewMetrics()
	rt := NewRouter(m, nil)
	rt.HandleFunc(http.MethodGet, "/v1/connect", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusSwitchingProtocols)
	})
	rt.HandleFunc(http.MethodGet, "/v1/messages", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	for _, path := range []string{"/v1/connect", "/v1/messages"} {
		rt.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil))
	}
	if n := testutil.ToFloat64(m.HTTPRequests.WithLabelValues("/v1/connect", "101")); n != 1 {
		t.Errorf("upgrades counted: %v, want 1", n)
	}
	if n := testutil.CollectAndCount(m.HTTPDuration); n != 1 {
		t.Errorf("request duration series: %d, want 1 (/v1/messages only)", n)
	}
}
