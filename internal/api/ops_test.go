package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// /readyz reports pass or fail per backend and never the failure's text
// (addresses, user names, driver messages); a hanging backend fails its
// check at the check timeout instead of holding the probe.
func TestReadyzReportsPassFailWithoutErrorText(t *testing.T) {
	var deadlineLeft time.Duration
	rt := NewRouter(nil, nil)
	MountOps(rt, Ops{
		CheckTimeout: 200 * time.Millisecond,
		Checks: map[string]ReadyFunc{
			"store": func(context.Context) error {
				return errors.New(`dial tcp 10.1.2.3:5432: password authentication failed for user "routing"`)
			},
			"bus": func(context.Context) error { return nil },
			"presence": func(ctx context.Context) error {
				d, _ := ctx.Deadline()
				deadlineLeft = time.Until(d)
				<-ctx.Done() // a backend that never answers
				return ctx.Err()
			},
		},
	})
	w := httptest.NewRecorder()
	rt.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", w.Code)
	}
	body := w.Body.String()
	for _, leak := range []string{"10.1.2.3", "password", "routing", "deadline"} {
		if strings.Contains(body, leak) {
			t.Fatalf("readiness report leaks %q: %s", leak, body)
		}
	}
	var got struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"store": "fail", "bus": "pass", "presence": "fail"}
	if got.Status != "unavailable" || len(got.Checks) != len(want) {
		t.Fatalf("report %s", body)
	}
	for k, v := range want {
		if got.Checks[k] != v {
			t.Fatalf("check %s: %q, want %q (%s)", k, got.Checks[k], v, body)
		}
	}
	if deadlineLeft <= 0 || deadlineLeft > 200*time.Millisecond {
		t.Fatalf("a check ran with %v left, want at most the check timeout", deadlineLeft)
	}

	// A check that ignores its context fails at the timeout too.
	stuck := make(chan struct{})
	defer close(stuck)
	rt = NewRouter(nil, nil)
	MountOps(rt, Ops{CheckTimeout: 100 * time.Millisecond, Checks: map[string]ReadyFunc{
		"store": func(context.Context) error { <-stuck; return nil },
		"bus":   func(context.Context) error { return nil },
	}})
	w = httptest.NewRecorder()
	rt.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), `"store":"fail"`) ||
		!strings.Contains(w.Body.String(), `"bus":"pass"`) {
		t.Fatalf("a stuck check: %d %s", w.Code, w.Body)
	}

	rt = NewRouter(nil, nil)
	MountOps(rt, Ops{Checks: map[string]ReadyFunc{"store": func(context.Context) error { return nil }}})
	w = httptest.NewRecorder()
	rt.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"store":"pass"`) {
		t.Fatalf("all passing: %d %s", w.Code, w.Body)
	}
}

// Profiles are served under /debug/pprof/ only when asked for.
func TestOpsPprof(t *testing.T) {
	get := func(rt *Router, path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w
	}
	off := NewRouter(nil, nil)
	MountOps(off, Ops{})
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/profile"} {
		if w := get(off, p); w.Code != http.StatusNotFound {
			t.Fatalf("pprof off: GET %s = %d, want 404", p, w.Code)
		}
	}
	on := NewRouter(nil, nil)
	MountOps(on, Ops{Pprof: true})
	if w := get(on, "/debug/pprof/"); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "goroutine") {
		t.Fatalf("pprof index = %d %q", w.Code, w.Body.String())
	}
	if w := get(on, "/debug/pprof/goroutine?debug=1"); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "goroutine profile:") {
		t.Fatalf("goroutine profile = %d %q", w.Code, w.Body.String())
	}
	if w := get(on, "/debug/pprof/heap"); w.Code != http.StatusOK || w.Body.Len() == 0 {
		t.Fatalf("heap profile = %d, %d bytes", w.Code, w.Body.Len())
	}
}
