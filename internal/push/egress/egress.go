// Package egress makes the HTTP clients that push delivery uses to reach
// providers and browsers' push services. Web Push endpoints are URLs that
// users choose, so every connection is checked where it is made: the
// dialer refuses, after name resolution, every address that is not public
// unicast and every port that is not allowed (443 by default); no redirect
// is followed; no proxy is used (a proxy would make the check see the
// proxy's address); response bodies are bounded.
package egress

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"syscall"
	"time"
)

// ErrForbiddenAddress is wrapped by the error of a connection refused
// because its address is not public unicast.
var ErrForbiddenAddress = errors.New("address is not public unicast")

// ErrForbiddenPort is wrapped by the error of a connection refused because
// its port is not one of Options.AllowedPorts.
var ErrForbiddenPort = errors.New("port is not allowed for push egress")

// DefaultAllowedPorts are the ports push egress connects to when
// Options.AllowedPorts is empty: HTTPS, where every push service listens.
var DefaultAllowedPorts = []uint16{443}

// Refused reports whether err comes from a connection the egress check
// refused (its address or its port): the same request would be refused
// again, so it is not worth a retry.
func Refused(err error) bool {
	return errors.Is(err, ErrForbiddenAddress) || errors.Is(err, ErrForbiddenPort)
}

// ErrResponseTooLarge is returned by reads of a response body past
// Options.MaxResponseBytes.
var ErrResponseTooLarge = errors.New("response body over the limit")

// DefaultMaxResponseBytes bounds response bodies when Options leaves it 0.
const DefaultMaxResponseBytes = 64 << 10

// Options configures NewClient. Zero fields take the defaults.
type Options struct {
	// AllowLoopback lets connections reach loopback addresses (127.0.0.0/8
	// and ::1) on any port: for local test setups with stand-in push
	// services only. Every other non-public address stays refused, and
	// public addresses keep to AllowedPorts.
	AllowLoopback bool
	// AllowedPorts are the ports connections to public addresses may use
	// (empty: DefaultAllowedPorts, 443 alone). A push endpoint on another
	// port (an internal service exposed on a public address, say) is
	// refused.
	AllowedPorts []uint16
	// RootCAs are the trusted roots (nil: the system roots).
	RootCAs *x509.CertPool
	// Timeout bounds each request, body read included (default 30s).
	Timeout time.Duration
	// MaxIdleConnsPerHost (default 16).
	MaxIdleConnsPerHost int
	// MaxResponseBytes bounds each response body (default 64 KiB); reading
	// past it fails with ErrResponseTooLarge.
	MaxResponseBytes int64
	// Resolver resolves host names (nil: net.DefaultResolver).
	Resolver *net.Resolver
}

// Allowed reports whether a connection to addr may be made: addr is public
// unicast, or loopback when allowLoopback is set. An address with a zone
// and every IPv4-mapped address (::ffff:0:0/96) are refused: the dialer
// connects to an IPv4 destination in its IPv4 form, which is checked as
// such, so the mapped form has no use but to slip past a check.
func Allowed(addr netip.Addr, allowLoopback bool) bool {
	if !addr.IsValid() || addr.Zone() != "" || addr.Is4In6() {
		return false
	}
	if addr.IsLoopback() {
		return allowLoopback
	}
	if !addr.IsGlobalUnicast() || addr.IsPrivate() {
		return false
	}
	for _, p := range refused {
		if p.Contains(addr) {
			return false
		}
	}
	return true
}

// refused are the special-purpose ranges (RFC 6890 and its updates) that
// IsGlobalUnicast and IsPrivate let through.
var refused = func() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // "this network"
		"100.64.0.0/10",   // shared address space (carrier-grade NAT, cloud metadata services)
		"169.254.0.0/16",  // link-local (cloud metadata at 169.254.169.254)
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // TEST-NET-1
		"192.88.99.0/24",  // 6to4 relay anycast
		"198.18.0.0/15",   // benchmarking
		"198.51.100.0/24", // TEST-NET-2
		"203.0.113.0/24",  // TEST-NET-3
		"240.0.0.0/4",     // reserved, and the limited broadcast address
		"::/96",           // IPv4-compatible (deprecated)
		"::ffff:0:0/96",   // IPv4-mapped (Allowed refuses it first, loopback included)
		"64:ff9b::/96",    // NAT64: would reach an IPv4 address through a gateway
		"64:ff9b:1::/48",  // local-use NAT64
		"100::/64",        // discard-only
		"2001::/23",       // IETF protocol assignments, Teredo
		"2001:db8::/32",   // documentation
		"2002::/16",       // 6to4: embeds an IPv4 address
		"3fff::/20",       // documentation (RFC 9637)
		"5f00::/16",       // segment routing (SRv6) SIDs (RFC 9602)
		"fc00::/7",        // unique local
		"fec0::/10",       // site-local (deprecated)
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

// Check reports whether push egress under o may connect to ap: nil, or an
// error wrapping ErrForbiddenAddress (ap's address is not Allowed) or
// ErrForbiddenPort (a public address on a port outside AllowedPorts). It
// is the check the dialer of NewDialer makes.
func (o Options) Check(ap netip.AddrPort) error {
	addr := ap.Addr()
	if !Allowed(addr, o.AllowLoopback) {
		return fmt.Errorf("push egress to %s: %w", addr, ErrForbiddenAddress)
	}
	if addr.IsLoopback() { // allowed only with AllowLoopback: a local stand-in on any port
		return nil
	}
	ports := o.AllowedPorts
	if len(ports) == 0 {
		ports = DefaultAllowedPorts
	}
	if !slices.Contains(ports, ap.Port()) {
		return fmt.Errorf("push egress to %s: %w (push.allowed_ports: %v)", ap, ErrForbiddenPort, ports)
	}
	return nil
}

// control is the dialer's Control hook: it runs for every address the
// dialer tries, after name resolution, before the connection is made.
func control(o Options) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("push egress to %s: %w", address, ErrForbiddenAddress)
		}
		return o.Check(ap)
	}
}

// NewDialer returns the dialer of push egress: it refuses, when it dials
// them, the addresses and ports o.Check refuses.
func NewDialer(o Options) *net.Dialer {
	o.AllowedPorts = slices.Clone(o.AllowedPorts) // the caller may reuse its slice
	return &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Resolver:  o.Resolver,
		Control:   control(o),
	}
}

// NewClient returns an HTTP client for push egress: connections through
// NewDialer, no proxy, no redirects (a 3xx answer is returned as it is),
// TLS 1.2 or later, bounded response headers and bodies.
func NewClient(o Options) *http.Client {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxIdleConnsPerHost <= 0 {
		o.MaxIdleConnsPerHost = 16
	}
	if o.MaxResponseBytes <= 0 {
		o.MaxResponseBytes = DefaultMaxResponseBytes
	}
	d := NewDialer(o)
	t := &http.Transport{
		Proxy:                  nil,
		DialContext:            d.DialContext,
		TLSClientConfig:        &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    o.MaxIdleConnsPerHost,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  o.Timeout,
		MaxResponseHeaderBytes: 16 << 10,
	}
	return &http.Client{
		Timeout:   o.Timeout,
		Transport: &boundedTransport{next: t, max: o.MaxResponseBytes},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// boundedTransport bounds the bodies of the responses of next.
type boundedTransport struct {
	next *http.Transport
	max  int64
}

func (b *boundedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := b.next.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &boundedBody{rc: resp.Body, left: b.max}
	return resp, nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the transport.
func (b *boundedTransport) CloseIdleConnections() { b.next.CloseIdleConnections() }

// boundedBody reads at most left bytes, then fails with ErrResponseTooLarge.
type boundedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte tells a body of exactly the limit from a longer one.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, ErrResponseTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *boundedBody) Close() error { return b.rc.Close() }
