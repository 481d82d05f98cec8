package web

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Proxies says which load balancers stand in front of a listener and how
// much of X-Forwarded-For they write: from that it derives a request's
// client address. The zero value trusts nothing: the peer is the client.
//
// A load balancer appends to X-Forwarded-For: nginx (proxy_add_x_forwarded_for)
// and AWS's Application Load Balancer append their peer, Google's external
// Application Load Balancer appends two entries, "<client>, <its own
// address>". Whatever stands left of those entries came from the client
// and is not believed.
type Proxies struct {
	// Trusted are the networks of the load balancers that connect to this
	// listener. With Hops 0, a peer in them has X-Forwarded-For read from
	// the right, skipping entries in these networks: the first other one
	// is the client. With Hops > 0 they only say whose header is read: a
	// peer outside them is the client. Empty with Hops > 0: every peer's
	// header is read (every connection must come through the balancer).
	Trusted []netip.Prefix
	// Hops is how many X-Forwarded-For entries, counted from the right,
	// the load balancers in front write: the client is the Hops-th entry
	// from the right (2 behind Google's external Application Load
	// Balancer, 1 behind nginx or an AWS ALB). A header with fewer
	// entries, or a malformed one among them, did not come through the
	// balancer as configured: the peer is then the client.
	Hops int
}

// ClientAddr returns the address of r's client, following X-Forwarded-For
// as p says. ok is false when r.RemoteAddr is not an IP address (a test
// request, a Unix socket): there is no address to return.
func (p Proxies) ClientAddr(r *http.Request) (addr netip.Addr, ok bool) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	peer = peer.Unmap().WithZone("")
	if p.Hops <= 0 && len(p.Trusted) == 0 {
		return peer, true
	}
	if len(p.Trusted) > 0 && !p.trusted(peer) {
		return peer, true
	}
	hops := forwardedFor(r)
	if p.Hops > 0 {
		if len(hops) < p.Hops {
			return peer, true
		}
		// Every entry the balancers wrote must be an address; what they
		// were given (left of them) is not looked at.
		var client netip.Addr
		for i := len(hops) - p.Hops; i < len(hops); i++ {
			a, ok := parseHop(hops[i])
			if !ok {
				return peer, true
			}
			if i == len(hops)-p.Hops {
				client = a
			}
		}
		return client, true
	}
	// From the right, past the trusted proxies: the first other address is
	// the client. At a malformed entry the last trusted one is.
	addr = peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseHop(hops[i])
		if !ok {
			break
		}
		addr = a
		if !p.trusted(addr) {
			break
		}
	}
	return addr, true
}

// LimitKey is the key per-address limits count r under: its client
// address, an IPv6 client as its /64 (which one host usually holds
// whole); r.RemoteAddr itself when it is not an IP address.
func (p Proxies) LimitKey(r *http.Request) string {
	addr, ok := p.ClientAddr(r)
	if !ok {
		return r.RemoteAddr
	}
	if addr.Is6() {
		pfx, _ := addr.Prefix(64)
		return pfx.String()
	}
	return addr.String()
}

func (p Proxies) trusted(a netip.Addr) bool {
	for _, n := range p.Trusted {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedFor returns the entries of r's X-Forwarded-For headers, in
// order (several header lines count as one list).
func forwardedFor(r *http.Request) []string {
	values := r.Header.Values("X-Forwarded-For")
	if len(values) == 0 {
		return nil
	}
	return strings.Split(strings.Join(values, ","), ",")
}

// parseHop parses one X-Forwarded-For entry: an address, or an address
// with a port ("198.51.100.7:4711", "[2001:db8::1]:4711"), as some
// balancers write.
func parseHop(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	if a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
