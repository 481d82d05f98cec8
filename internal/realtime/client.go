package realtime

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
)

// hostAllowed reports whether a browser may connect by r's Host: an upgrade
// with an Origin header must name an allowed host, so that a page on a
// DNS-rebound name cannot pass as same-origin. Requests without Origin
// (not from a browser) are not checked.
func (s *Server) hostAllowed(r *http.Request) bool {
	if r.Header.Get("Origin") == "" || slices.Contains(s.o.AllowedHosts, "*") {
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	return slices.ContainsFunc(s.o.AllowedHosts, func(h string) bool { return strings.EqualFold(h, host) })
}

// originAllowed checks a browser's Origin: absent (not a browser), the
// host the request came to (allowed hosts are checked apart), or matching
// one of AllowedOrigins: a pattern with "://" matches scheme://host[:port],
// one without matches host[:port], by path.Match, ignoring case.
func (s *Server) originAllowed(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return fmt.Errorf("origin %q is not a URL with a host", origin)
	}
	if strings.EqualFold(r.Host, u.Host) {
		return nil
	}
	for _, pattern := range s.o.AllowedOrigins {
		target := u.Host
		if strings.Contains(pattern, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, err := path.Match(strings.ToLower(pattern), strings.ToLower(target)); err != nil {
			return fmt.Errorf("origin pattern %q: %w", pattern, err)
		} else if ok {
			return nil
		}
	}
	return fmt.Errorf("origin %q is not allowed for host %q", origin, r.Host)
}
