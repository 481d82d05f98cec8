package web

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

// The client address is the entry the trusted load balancers wrote:
// entries a client sends itself (left of them) are never believed, a
// header that did not come through the balancers as configured yields the
// peer, and so does one whose balancer-written part is malformed.
func TestClientAddr(t *testing.T) {
	google := prefixes("35.191.0.0/16", "130.211.0.0/22") // Google's front ends
	cases := []struct {
		name    string
		proxies Proxies
		remote  string
		xff     []string // header lines
		want    string
	}{
		// Direct connections: the peer, whatever the header says.
		{"direct", Proxies{}, "203.0.113.5:4000", nil, "203.0.113.5"},
		{"direct ignores the header", Proxies{}, "203.0.113.5:4000", []string{"198.51.100.1"}, "203.0.113.5"},
		{"direct IPv4-mapped peer", Proxies{}, "[::ffff:203.0.113.5]:4000", nil, "203.0.113.5"},

		// Google's external Application Load Balancer: "<client>, <lb>".
		{"gcp", Proxies{Trusted: google, Hops: 2}, "35.191.3.4:5000", []string{"198.51.100.7, 34.120.1.1"}, "198.51.100.7"},
		{"gcp with spoofed entries", Proxies{Trusted: google, Hops: 2}, "35.191.3.4:5000", []string{"6.6.6.6, 198.51.100.7, 34.120.1.1"}, "198.51.100.7"},
		{"gcp with many spoofed entries and garbage", Proxies{Trusted: google, Hops: 2}, "130.211.0.9:5000", []string{"not-an-ip, 1.1.1.1, ::1, 198.51.100.7, 34.120.1.1"}, "198.51.100.7"},
		{"gcp without a trusted list", Proxies{Hops: 2}, "10.8.0.1:5000", []string{"6.6.6.6, 198.51.100.7, 34.120.1.1"}, "198.51.100.7"},
		{"gcp header from a peer outside the trusted list", Proxies{Trusted: google, Hops: 2}, "203.0.113.5:4000", []string{"6.6.6.6, 34.120.1.1"}, "203.0.113.5"},
		{"gcp over two header lines", Proxies{Trusted: google, Hops: 2}, "35.191.3.4:5000", []string{"6.6.6.6", "198.51.100.7, 34.120.1.1"}, "198.51.100.7"},
		{"gcp IPv6 client", Proxies{Trusted: google, Hops: 2}, "35.191.3.4:5000", []string{"2001:db8::7, 34.120.1.1"}, "2001:db8::7"},

		// nginx and AWS ALB append their peer: one hop.
		{"one hop", Proxies{Hops: 1}, "10.0.0.2:5000", []string{"198.51.100.7"}, "198.51.100.7"},
		{"one hop with a spoofed entry", Proxies{Hops: 1}, "10.0.0.2:5000", []string{"6.6.6.6, 198.51.100.7"}, "198.51.100.7"},
		{"one hop with a port", Proxies{Hops: 1}, "10.0.0.2:5000", []string{"198.51.100.7:4711"}, "198.51.100.7"},
		{"one hop, IPv6 with a port", Proxies{Hops: 1}, "10.0.0.2:5000", []string{"[2001:db8::7]:4711"}, "2001:db8::7"},

		// Fewer entries than hops: not through the balancers as configured.
		{"fewer entries than hops", Proxies{Trusted: google, Hops: 2}, "35.191.3.4:5000", []string{"198.51.100.7"}, "35.191.3.4"},
		{"no header with hops", Proxies{Hops: 1}, "10.0.0.2:5000", nil, "10.0.0.2"},
		{"empty header with hops", Proxies{Hops: 1}, "10.0.0.2:5000", []string{""}, "10.0.0.2"},

		// Malformed entries where the balancers write: the peer.
		{"malformed client entry", Proxies{Hops: 2}, "10.0.0.2:5000", []string{"1.2.3.4, bogus, 34.120.1.1"}, "10.0.0.2"},
		{"malformed balancer entry", Proxies{Hops: 2}, "10.0.0.2:5000", []string{"198.51.100.7, unknown"}, "10.0.0.2"},
		{"empty client entry", Proxies{Hops: 2}, "10.0.0.2:5000", []string{"1.2.3.4,, 34.120.1.1"}, "10.0.0.2"},
		{"zoned entry", Proxies{Hops: 1}, "10.0.0.2:5000", []string{"fe80::1%eth0"}, "10.0.0.2"},

		// The network list alone: the first untrusted entry from the right.
		{"cidr: untrusted peer's header is ignored", Proxies{Trusted: prefixes("10.0.0.0/8")}, "203.0.113.5:4000", []string{"198.51.100.1"}, "203.0.113.5"},
		{"cidr: trusted peer", Proxies{Trusted: prefixes("10.0.0.0/8")}, "10.1.2.3:4000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"cidr: the client cannot prepend its way out", Proxies{Trusted: prefixes("10.0.0.0/8")}, "10.1.2.3:4000", []string{"6.6.6.6, 198.51.100.1, 10.9.9.9"}, "198.51.100.1"},
		{"cidr: no header", Proxies{Trusted: prefixes("10.0.0.0/8")}, "10.1.2.3:4000", nil, "10.1.2.3"},
		{"cidr: malformed entry stops at the last trusted", Proxies{Trusted: prefixes("10.0.0.0/8")}, "10.1.2.3:4000", []string{"198.51.100.1, junk, 10.9.9.9"}, "10.9.9.9"},
		// Why Google's front ends alone are not enough: the balancer's
		// own address is the rightmost untrusted entry.
		{"cidr: gcp without hops names the balancer", Proxies{Trusted: google}, "35.191.3.4:5000", []string{"198.51.100.7, 34.120.1.1"}, "34.120.1.1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/v1/connect", nil)
			r.RemoteAddr = tc.remote
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			got, ok := tc.proxies.ClientAddr(r)
			if !ok || got != netip.MustParseAddr(tc.want) {
				t.Fatalf("ClientAddr = %v, %v; want %s", got, ok, tc.want)
			}
		})
	}
}

// Per-address limits count an IPv6 client as its /64 and fall back to the
// raw peer when it is not an IP address.
func TestLimitKey(t *testing.T) {
	cases := []struct{ remote, xff, want string }{
		{"203.0.113.5:4000", "", "203.0.113.5"},
		{"[2001:db8:1:2:3:4:5:6]:4000", "", "2001:db8:1:2::/64"},
		{"10.0.0.2:5000", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"pipe", "", "pipe"},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := (Proxies{Hops: 1}).LimitKey(r); got != tc.want {
			t.Errorf("%s with X-Forwarded-For %q: %q, want %q", tc.remote, tc.xff, got, tc.want)
		}
	}
}
