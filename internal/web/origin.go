package web

import (
	"net/http"
	"slices"
	"strings"
)

// OriginAllowed reports whether a WebSocket upgrade from origin is allowed:
// no Origin header (a non-browser client), an origin in allowed, or the same
// host as the request.
func OriginAllowed(r *http.Request, allowed []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if slices.Contains(allowed, "*") || slices.Contains(allowed, origin) {
		return true
	}
	// Same origin: the Origin's host equals the Host the client connected to.
	if i := strings.Index(origin, "://"); i >= 0 && origin[i+3:] == r.Host {
		return true
	}
	return false
}
