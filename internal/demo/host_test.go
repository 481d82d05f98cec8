package demo

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// While the demo is on, a request reaches the API only by a loopback host
// or a configured one: a page on a DNS-rebound name gets 403 and nothing
// else.
func TestHostGuard(t *testing.T) {
	reached := false
	h := HostGuard([]string{"Dev.Example", "192.0.2.7"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached = true
		w.WriteHeader(http.StatusNoContent)
	}))
	for host, ok := range map[string]bool{
		"localhost": true, "localhost:8082": true, "LOCALHOST:8082": true, "localhost.:8082": true,
		"127.0.0.1": true, "127.0.0.1:8082": true, "127.3.2.1:9": true, "[::1]:8082": true, "[::1]": true,
		"dev.example:8082": true, "dev.example": true, "192.0.2.7:8082": true,
		"evil.example:8082": false, "evil.example": false, "": false, "localhost.evil.example:8082": false,
		"127.0.0.1.nip.io:8082": false, "192.0.2.2:8082": false, "[::]:8082": false, "0.0.0.0:8082": false,
		"dev.example.evil:8082": false,
	} {
		reached = false
		r := httptest.NewRequest(http.MethodPost, TokenPath, nil)
		r.Host = host
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if ok {
			if !reached || w.Code != http.StatusNoContent {
				t.Errorf("Host %q: %d, reached %v; want it let through", host, w.Code, reached)
			}
			continue
		}
		var body struct {
			Error struct{ Code string } `json:"error"`
		}
		if reached || w.Code != http.StatusForbidden || json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Error.Code != "host_not_allowed" {
			t.Errorf("Host %q: %d %s, reached %v; want 403 host_not_allowed", host, w.Code, w.Body, reached)
		}
	}
}
