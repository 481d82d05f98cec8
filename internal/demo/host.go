package demo

import (
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/go-routing-service/routingservice/internal/web"
)

// HostGuard answers 403 host_not_allowed to every request whose Host header
// names neither a loopback host (localhost, a loopback address; any port)
// nor one of hosts (names or addresses without a port, matched without
// regard to case), and passes the others to next.
//
// The demo's token endpoint signs in as anyone, so an instance serving it
// listens on loopback only; HostGuard keeps a web page from reaching it
// there by DNS rebinding (a name of the page's that resolves to 127.0.0.1
// next), which would make the page same-origin with the API.
func HostGuard(hosts []string, next http.Handler) http.Handler {
	allowed := make([]string, 0, len(hosts))
	for _, h := range hosts {
		allowed = append(allowed, normalHost(h))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAllowed(r.Host, allowed) {
			web.WriteError(w, web.Errorf(http.StatusForbidden, web.CodeHostNotAllowed,
				"the Host header names neither a loopback host nor one of realtime.allowed_hosts (the demo is on)"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func hostAllowed(hostport string, allowed []string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = normalHost(host)
	if host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() {
		return true
	}
	return slices.Contains(allowed, host)
}

// normalHost lower-cases a host and drops IPv6 brackets and a final dot.
func normalHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")
}
