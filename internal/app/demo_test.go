package app_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/demo"
)

// With demo.enabled in local mode the API listener serves the demo, and the
// WebSocket server on its other port lets the demo's page in (and still
// refuses others).
func TestDemoInLocalMode(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.Demo.Enabled = true })
	resp, err := http.Get(ta.apiURL + "/demo/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /demo/: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp, err = http.Post(ta.apiURL+demo.TokenPath, "application/json", strings.NewReader(`{"sub":"urn:sm:user:bob"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %d", demo.TokenPath, resp.StatusCode)
	}

	tok, err := auth.Sign([]byte(ta.cfg.JWTSecret), "urn:sm:user:bob", time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dial := func(origin string) int {
		h := http.Header{}
		h.Set("Origin", origin)
		h.Set("Authorization", "Bearer "+tok)
		c, resp, err := websocket.Dial(ctxT(t), ta.wsURL+"/v1/connect", &websocket.DialOptions{HTTPHeader: h})
		if err == nil {
			c.Close(websocket.StatusNormalClosure, "")
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("dial from %s: %v", origin, err)
		}
		return resp.StatusCode
	}
	demoOrigin := strings.Replace(ta.apiURL, "127.0.0.1", "localhost", 1)
	if got := dial(demoOrigin); got != http.StatusSwitchingProtocols {
		t.Errorf("WebSocket from the demo's origin %s: %d, want 101", demoOrigin, got)
	}
	if got := dial("http://evil.example"); got != http.StatusForbidden {
		t.Errorf("WebSocket from another origin: %d, want 403", got)
	}
}
