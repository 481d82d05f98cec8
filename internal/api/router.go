package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	rpprof "runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// Router routes exact paths and methods, and answers unknown paths (404) and
// wrong methods (405, with Allow) in the JSON error shape.
type Router struct {
	routes  map[string]map[string]http.Handler
	metrics *telemetry.Metrics
	log     *slog.Logger
}

// NewRouter returns an empty router. metrics may be nil.
func NewRouter(metrics *telemetry.Metrics, log *slog.Logger) *Router {
	if log == nil {
		log = slog.Default()
	}
	return &Router{routes: map[string]map[string]http.Handler{}, metrics: metrics, log: log}
}

// Handle routes method and path to h.
func (rt *Router) Handle(method, path string, h http.Handler) {
	m := rt.routes[path]
	if m == nil {
		m = map[string]http.Handler{}
		rt.routes[path] = m
	}
	m[method] = h
	if method == http.MethodGet {
		m[http.MethodHead] = h
	}
}

// HandleFunc routes method and path to f.
func (rt *Router) HandleFunc(method, path string, f http.HandlerFunc) { rt.Handle(method, path, f) }

// Routes returns every routed path with its methods, sorted. A GET route
// also lists HEAD, which the router serves with the same handler. The
// result is a copy; changing it does not change the router.
func (rt *Router) Routes() map[string][]string {
	out := make(map[string][]string, len(rt.routes))
	for path, methods := range rt.routes {
		ms := make([]string, 0, len(methods))
		for m := range methods {
			ms = append(ms, m)
		}
		slices.Sort(ms)
		out[path] = ms
	}
	return out
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer (hijack for WebSockets).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP dispatches the request, recovering from panics (500, logged).
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	route := "unknown"
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			rt.log.Error("panic serving request", "path", r.URL.Path, "method", r.Method, "panic", fmt.Sprint(v))
			if sw.status == 0 {
				web.WriteError(sw, web.Errorf(http.StatusInternalServerError, web.CodeInternal, "internal error"))
			}
		}
		if rt.metrics != nil {
			code := sw.status
			if code == 0 {
				code = http.StatusOK
			}
			rt.metrics.HTTPRequests.WithLabelValues(route, statusLabel(code)).Inc()
			if code != http.StatusSwitchingProtocols { // a WebSocket session is not a request
				rt.metrics.HTTPDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
			}
		}
	}()
	methods, ok := rt.routes[r.URL.Path]
	if !ok {
		web.WriteError(sw, web.Errorf(http.StatusNotFound, web.CodeNotFound, "no such path: "+truncate(r.URL.Path, 100)))
		return
	}
	route = r.URL.Path
	if span := trace.SpanFromContext(r.Context()); span.IsRecording() {
		span.SetAttributes(attribute.String("http.route", route))
	}
	h, ok := methods[r.Method]
	if !ok {
		if r.Method == http.MethodOptions {
			// CORS preflight is answered by the CORS middleware; without it, allow nothing.
			sw.WriteHeader(http.StatusNoContent)
			return
		}
		allow := make([]string, 0, len(methods))
		for m := range methods {
			allow = append(allow, m)
		}
		slices.Sort(allow)
		sw.Header().Set("Allow", strings.Join(allow, ", "))
		web.WriteError(sw, web.Errorf(http.StatusMethodNotAllowed, web.CodeMethodNotAllowed, r.Method+" is not allowed on "+route))
		return
	}
	h.ServeHTTP(sw, r)
}

func statusLabel(code int) string {
	switch {
	case code >= 100 && code < 600:
		return strconv.Itoa(code)
	default:
		return "other"
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// ReadyFunc checks one backend.
type ReadyFunc func(ctx context.Context) error

// Ops configures the operations endpoints.
type Ops struct {
	// Checks are the backends /readyz checks, by name.
	Checks map[string]ReadyFunc
	// Metrics serves /metrics (nil: not mounted).
	Metrics http.Handler
	// CheckTimeout bounds each check (default 1s).
	CheckTimeout time.Duration
	Logger       *slog.Logger
	// Pprof mounts Go's runtime profiles under /debug/pprof/.
	Pprof bool
}

// MountOps adds the operations endpoints (no token): /healthz, /readyz and
// /metrics. /readyz runs the checks at once, each bounded by its timeout,
// and reports pass or fail per backend; the reason of a failure goes to the
// log only (it may name addresses or carry a driver's message).
func MountOps(rt *Router, o Ops) {
	if o.CheckTimeout <= 0 {
		o.CheckTimeout = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	rt.HandleFunc(http.MethodGet, "/healthz", func(w http.ResponseWriter, r *http.Request) {
		web.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	rt.HandleFunc(http.MethodGet, "/readyz", func(w http.ResponseWriter, r *http.Request) {
		type result struct {
			name string
			err  error
		}
		results := make(chan result, len(o.Checks))
		for name, check := range o.Checks {
			go func() {
				ctx, cancel := context.WithTimeout(r.Context(), o.CheckTimeout)
				defer cancel()
				results <- result{name, check(ctx)}
			}()
		}
		checks := make(map[string]string, len(o.Checks))
		for name := range o.Checks {
			checks[name] = "fail" // until it answers
		}
		ready := true
		// A check that ignores its context fails at the timeout all the same.
		late := time.NewTimer(o.CheckTimeout + 100*time.Millisecond)
		defer late.Stop()
	collect:
		for range o.Checks {
			select {
			case res := <-results:
				if res.err != nil {
					ready = false
					o.Logger.Warn("readiness check failed", "check", res.name, "err", res.err)
					continue
				}
				checks[res.name] = "pass"
			case <-late.C:
				ready = false
				o.Logger.Warn("readiness checks did not answer in time")
				break collect
			}
		}
		if !ready {
			web.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "checks": checks})
			return
		}
		web.WriteJSON(w, http.StatusOK, map[string]any{"status": "ready", "checks": checks})
	})
	if o.Metrics != nil {
		rt.Handle(http.MethodGet, "/metrics", o.Metrics)
	}
	if o.Pprof {
		mountPprof(rt)
	}
}

// mountPprof adds Go's runtime profiles (net/http/pprof) under
// /debug/pprof/: the index, the CPU profile and execution trace, and each
// named profile.
func mountPprof(rt *Router) {
	rt.HandleFunc(http.MethodGet, "/debug/pprof/", pprof.Index)
	rt.HandleFunc(http.MethodGet, "/debug/pprof/cmdline", pprof.Cmdline)
	rt.HandleFunc(http.MethodGet, "/debug/pprof/profile", pprof.Profile)
	rt.HandleFunc(http.MethodGet, "/debug/pprof/symbol", pprof.Symbol)
	rt.HandleFunc(http.MethodPost, "/debug/pprof/symbol", pprof.Symbol)
	rt.HandleFunc(http.MethodGet, "/debug/pprof/trace", pprof.Trace)
	for _, p := range rpprof.Profiles() {
		rt.Handle(http.MethodGet, "/debug/pprof/"+p.Name(), pprof.Handler(p.Name()))
	}
}
