// Package egress makes the HTTP clients that push delivery uses to reach
// providers and browsers' push services. Web Push endpoints are URLs that
// users choose, so every connection is checked where it is made: the
// dialer refuses, after name resolution, every address that is not public
// unicast; no redirect is followed; no proxy is used (a proxy would make
// the check see the proxy's address); response bodies are bounded.
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
	"syscall"
	"time"
)

// ErrForbiddenAddress is wrapped by the error of a connection refused
// because its address is not public unicast.
var ErrForbiddenAddress = errors.New("address is not public unicast")

// ErrResponseTooLarge is returned by reads of a response body past
// Options.MaxResponseBytes.
var ErrResponseTooLarge = errors.New("response body over the limit")

// DefaultMaxResponseBytes bounds response bodies when Options leaves it 0.
const DefaultMaxResponseBytes = 64 << 10

// Options configures NewClient. Zero fields take the defaults.
type Options struct {
	// AllowLoopback lets connections reach loopback addresses (127.0.0.0/8
	// and ::1, and their IPv4-mapped forms): for local test setups with
	// stand-in push services only. Every other non-public address stays
	// refused.
	AllowLoopback bool
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
// and the IPv4-mapped form of a refused IPv4 address are refused.
func Allowed(addr netip.Addr, allowLoopback bool) bool {
	if !addr.IsValid() || addr.Zone() != "" {
		return false
	}
	addr = addr.Unmap()
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
		"64:ff9b::/96",    // NAT64: would reach an IPv4 address through a gateway
		"64:ff9b:1::/48",  // local-use NAT64
		"100::/64",        // discard-only
		"2001::/23",       // IETF protocol assignments, Teredo
		"2001:db8::/32",   // documentation
		"2002::/16",       // 6to4: embeds an IPv4 address
		"fc00::/7",        // unique local
		"fec0::/10",       // site-local (deprecated)
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

// control is the dialer's Control hook: it runs for every address the
// dialer tries, after name resolution, before the connection is made.
func control(allowLoopback bool) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("push egress to %s: %w", address, ErrForbiddenAddress)
		}
		if !Allowed(ap.Addr(), allowLoopback) {
			return fmt.Errorf("push egress to %s: %w", ap.Addr(), ErrForbiddenAddress)
		}
		return nil
	}
}

// NewDialer returns the dialer of push egress: it refuses, when it dials
// them, the addresses Allowed refuses.
func NewDialer(o Options) *net.Dialer {
	return &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Resolver:  o.Resolver,
		Control:   control(o.AllowLoopback),
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
