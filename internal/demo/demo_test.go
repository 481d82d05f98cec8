package demo

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/auth"
)

type mux struct{ routes map[string]http.Handler }

func (m *mux) Handle(method, path string, h http.Handler) {
	m.routes[method+" "+path] = h
}

func (m *mux) do(t *testing.T, method, path, ctype, body string) *httptest.ResponseRecorder {
	t.Helper()
	h, ok := m.routes[method+" "+path]
	if !ok {
		t.Fatalf("%s %s is not routed", method, path)
	}
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

const secret = "demo-test-secret-0123456789-0123456789"

func mounted(t *testing.T) *mux {
	t.Helper()
	m := &mux{routes: map[string]http.Handler{}}
	if err := Mount(m, Options{Secret: []byte(secret), TokenTTL: time.Minute, WSPort: "8085"}); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPageAndScripts(t *testing.T) {
	m := mounted(t)
	for _, tc := range []struct{ path, ctype, contains string }{
		{"/demo/", "text/html", "<title>routingservice demo</title>"},
		{"/demo/index.html", "text/html", "demo.js"},
		{"/demo/demo.js", "javascript", "from './routing-client.js'"},
		{"/demo/routing-client.js", "javascript", "export class RoutingClient"},
		{"/demo/sw.js", "javascript", "showNotification"},
	} {
		w := m.do(t, http.MethodGet, tc.path, "", "")
		if w.Code != http.StatusOK || !strings.Contains(w.Header().Get("Content-Type"), tc.ctype) || !strings.Contains(w.Body.String(), tc.contains) {
			t.Errorf("GET %s: %d %q, body has %q: %v", tc.path, w.Code, w.Header().Get("Content-Type"), tc.contains, strings.Contains(w.Body.String(), tc.contains))
		}
	}
}

func TestTokenIsValidForTheSubject(t *testing.T) {
	m := mounted(t)
	w := m.do(t, http.MethodPost, TokenPath, "application/json", `{"sub":"urn:sm:user:alice"}`)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var a TokenAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
		t.Fatal(err)
	}
	if a.WSPort != "8085" {
		t.Errorf("ws_port %q, want 8085", a.WSPort)
	}
	if d := time.Until(a.ExpiresAt); d <= 0 || d > time.Minute {
		t.Errorf("expires_at %v is not within the TTL", a.ExpiresAt)
	}
	v, err := auth.NewVerifier(context.Background(), auth.Options{Config: auth.Config{Algorithms: []string{"HS256"}}, HS256Secret: []byte(secret)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	c, err := v.Verify(a.Token)
	if err != nil {
		t.Fatalf("token does not verify: %v", err)
	}
	if c.Subject != "urn:sm:user:alice" {
		t.Fatalf("sub %q, want urn:sm:user:alice", c.Subject)
	}
}

func TestTokenBadInput(t *testing.T) {
	m := mounted(t)
	for _, tc := range []struct {
		name, ctype, body string
		status            int
		code              string
	}{
		{"not json", "application/json", `{`, http.StatusBadRequest, "malformed_json"},
		{"bad urn", "application/json", `{"sub":"alice"}`, http.StatusBadRequest, "invalid_parameter"},
		{"no sub", "application/json", `{}`, http.StatusBadRequest, "invalid_parameter"},
		{"form", "application/x-www-form-urlencoded", `sub=urn:sm:user:alice`, http.StatusUnsupportedMediaType, "unsupported_media_type"},
	} {
		w := m.do(t, http.MethodPost, TokenPath, tc.ctype, tc.body)
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		_ = json.Unmarshal(w.Body.Bytes(), &e)
		if w.Code != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, w.Code, e.Error.Code, tc.status, tc.code)
		}
	}
}

func TestMountNeedsASecret(t *testing.T) {
	if err := Mount(&mux{routes: map[string]http.Handler{}}, Options{}); err == nil {
		t.Fatal("Mount without a secret succeeded")
	}
}

// /demo without its slash is redirected to the page.
func TestDemoWithoutSlashRedirects(t *testing.T) {
	w := mounted(t).do(t, http.MethodGet, "/demo", "", "")
	if w.Code != http.StatusMovedPermanently || w.Header().Get("Location") != "/demo/" {
		t.Errorf("GET /demo: %d, Location %q; want 301 to /demo/", w.Code, w.Header().Get("Location"))
	}
}
