package egress_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/go-routing-service/routingservice/internal/push/egress"
)

// Every special-purpose prefix that Go's address predicates let through
// is refused, across the prefix, loopback allowed or not; the addresses
// just outside each IPv6 prefix are public.
func TestRefusedPrefixes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		prefix  string
		inside  []string
		outside []string
	}{
		// IPv4-mapped: refused whatever IPv4 address it embeds, public
		// and loopback included.
		{"::ffff:0:0/96", []string{"::ffff:0.0.0.0", "::ffff:8.8.8.8", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
			"::ffff:169.254.169.254", "::ffff:100.64.0.1", "::ffff:255.255.255.255"}, []string{"2606:4700:4700::1111"}},
		// IPv6 documentation (RFC 9637).
		{"3fff::/20", []string{"3fff::", "3fff::1", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"}, []string{"3ffe:ffff::1", "3fff:1000::1"}},
		// Segment routing (SRv6) SIDs (RFC 9602).
		{"5f00::/16", []string{"5f00::", "5f00::1", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}, []string{"5eff:ffff::1", "5f01::1"}},
		// The ranges refused before these.
		{"2001:db8::/32", []string{"2001:db8::1"}, nil},
		{"64:ff9b::/96", []string{"64:ff9b::808:808"}, nil},
		{"2002::/16", []string{"2002:808:808::1"}, nil},
		{"fc00::/7", []string{"fd00::1"}, nil},
		{"100.64.0.0/10", []string{"100.127.255.254"}, nil},
		{"192.0.2.0/24", []string{"192.0.2.1"}, nil},
	} {
		for _, s := range c.inside {
			a := netip.MustParseAddr(s)
			if egress.Allowed(a, false) || egress.Allowed(a, true) {
				t.Errorf("%s (in %s) is allowed", s, c.prefix)
			}
			if err := (egress.Options{AllowLoopback: true}).Check(netip.AddrPortFrom(a, 443)); !errors.Is(err, egress.ErrForbiddenAddress) {
				t.Errorf("Check(%s:443) = %v, want ErrForbiddenAddress", s, err)
			}
		}
		for _, s := range c.outside {
			if !egress.Allowed(netip.MustParseAddr(s), false) {
				t.Errorf("%s (outside %s) is refused", s, c.prefix)
			}
		}
	}
}

// A public address is reached on an allowed port only: 443 by default,
// the configured ports otherwise. Loopback, where allowed, takes any port
// (local stand-ins listen on random ports).
func TestCheckPorts(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		o    egress.Options
		ap   string
		want error // nil: allowed
	}{
		{"public on 443", egress.Options{}, "8.8.8.8:443", nil},
		{"public IPv6 on 443", egress.Options{}, "[2606:4700:4700::1111]:443", nil},
		{"public on 8443", egress.Options{}, "8.8.8.8:8443", egress.ErrForbiddenPort},
		{"public on 80", egress.Options{}, "8.8.8.8:80", egress.ErrForbiddenPort},
		{"public IPv6 on 22", egress.Options{}, "[2606:4700:4700::1111]:22", egress.ErrForbiddenPort},
		{"public on 6379, loopback allowed", egress.Options{AllowLoopback: true}, "8.8.8.8:6379", egress.ErrForbiddenPort},
		{"public on 8443 configured", egress.Options{AllowedPorts: []uint16{443, 8443}}, "8.8.8.8:8443", nil},
		{"public on 443, only 2197 configured", egress.Options{AllowedPorts: []uint16{2197}}, "8.8.8.8:443", egress.ErrForbiddenPort},
		{"loopback on 8443, loopback allowed", egress.Options{AllowLoopback: true}, "127.0.0.1:8443", nil},
		{"IPv6 loopback on 8443, loopback allowed", egress.Options{AllowLoopback: true}, "[::1]:8443", nil},
		{"loopback on 443", egress.Options{}, "127.0.0.1:443", egress.ErrForbiddenAddress},
		{"private on 443", egress.Options{AllowLoopback: true}, "10.0.0.1:443", egress.ErrForbiddenAddress},
	} {
		t.Run(c.name, func(t *testing.T) {
			ap := netip.MustParseAddrPort(c.ap)
			// The dialer's hook makes the same check (called here without
			// dialing: nothing leaves the machine).
			hook := egress.NewDialer(c.o).Control
			for name, err := range map[string]error{"Check": c.o.Check(ap), "dialer": hook("tcp", c.ap, nil)} {
				if c.want == nil && err != nil {
					t.Errorf("%s: %v, want allowed", name, err)
				}
				if c.want != nil && !errors.Is(err, c.want) {
					t.Errorf("%s: %v, want %v", name, err, c.want)
				}
				if c.want != nil && !egress.Refused(err) {
					t.Errorf("%s: Refused(%v) = false", name, err)
				}
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		addr     string
		loopback bool // allowed with AllowLoopback
		public   bool // allowed without it
	}{
		{addr: "8.8.8.8", public: true, loopback: true},
		{addr: "2606:4700:4700::1111", public: true, loopback: true},
		{addr: "127.0.0.1", loopback: true},
		{addr: "127.9.9.9", loopback: true},
		{addr: "::1", loopback: true},
		{addr: "10.0.0.1"},
		{addr: "172.16.5.4"},
		{addr: "192.168.1.1"},
		{addr: "::ffff:10.0.0.1"},
		{addr: "::ffff:169.254.169.254"},
		{addr: "169.254.169.254"},
		{addr: "100.100.100.200"},
		{addr: "100.64.0.1"},
		{addr: "0.0.0.0"},
		{addr: "0.1.2.3"},
		{addr: "224.0.0.1"},
		{addr: "239.255.255.250"},
		{addr: "255.255.255.255"},
		{addr: "240.0.0.1"},
		{addr: "198.18.0.1"},
		{addr: "::"},
		{addr: "fe80::1"},
		{addr: "fe80::1%eth0"},
		{addr: "fd00:ec2::254"},
		{addr: "fc00::1"},
		{addr: "ff02::1"},
		{addr: "ff05::2"},
		{addr: "64:ff9b::a00:1"},
		{addr: "2002:a00:1::1"},
		{addr: "2001:0:a00:1::1"},
		{addr: "::127.0.0.1"},
	} {
		a := netip.MustParseAddr(c.addr)
		if got := egress.Allowed(a, false); got != c.public {
			t.Errorf("Allowed(%s, false) = %v, want %v", c.addr, got, c.public)
		}
		if got := egress.Allowed(a, true); got != c.loopback {
			t.Errorf("Allowed(%s, true) = %v, want %v", c.addr, got, c.loopback)
		}
	}
}

// dnsServer answers A queries for the names of hosts (fully qualified,
// lower case) with their address, and every other query with no record.
func dnsServer(t *testing.T, hosts map[string]netip.Addr) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			b.EnableCompression()
			_ = b.StartQuestions()
			_ = b.Question(q)
			_ = b.StartAnswers()
			if a, ok := hosts[strings.ToLower(q.Name.String())]; ok && q.Type == dnsmessage.TypeA && a.Is4() {
				_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60},
					dnsmessage.AResource{A: a.As4()})
			}
			out, err := b.Finish()
			if err != nil {
				continue
			}
			_, _ = pc.WriteTo(out, from)
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// counted is a local HTTP server that counts the requests it gets.
func counted(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if h != nil {
			h(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func get(ctx context.Context, c *http.Client, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("x"))
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// A host name that resolves to a loopback or link-local address is refused
// when it is dialled, whatever its name says: the check runs on the
// resolved address, in the dialer.
func TestResolvedInternalAddressRefused(t *testing.T) {
	t.Parallel()
	srv, hits := counted(t, nil)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	res := dnsServer(t, map[string]netip.Addr{
		"push.example.com.":         netip.MustParseAddr("127.0.0.1"),
		"metadata.google.internal.": netip.MustParseAddr("169.254.169.254"),
		"cgnat.example.com.":        netip.MustParseAddr("100.100.100.200"),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	strict := egress.NewClient(egress.Options{Resolver: res, Timeout: 5 * time.Second})
	for _, host := range []string{"push.example.com", "metadata.google.internal", "cgnat.example.com", "localhost", "127.0.0.1", "[::ffff:127.0.0.1]"} {
		resp, err := get(ctx, strict, "http://"+host+":"+port+"/wake")
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: answered %d, want the connection refused", host, resp.StatusCode)
		}
		if !errors.Is(err, egress.ErrForbiddenAddress) {
			t.Fatalf("%s: %v, want ErrForbiddenAddress", host, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the internal server got %d requests", n)
	}

	// The same name, through the same code path, reaches the server when
	// loopback is allowed (a local test setup): the refusal above is the
	// address check, not a resolution failure.
	local := egress.NewClient(egress.Options{Resolver: res, AllowLoopback: true, Timeout: 5 * time.Second})
	resp, err := get(ctx, local, "http://push.example.com:"+port+"/wake")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if hits.Load() != 1 {
		t.Fatalf("server hits %d, want 1", hits.Load())
	}
	// Loopback allowed is not link-local allowed.
	if resp, err := get(ctx, local, "http://metadata.google.internal:"+port+"/"); !errors.Is(err, egress.ErrForbiddenAddress) {
		if err == nil {
			resp.Body.Close()
		}
		t.Fatalf("link-local with loopback allowed: %v, want ErrForbiddenAddress", err)
	}
}

// A redirect is never followed: the 3xx answer comes back as it is and
// the address it names gets no request.
func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	internal, internalHits := counted(t, nil)
	public, _ := counted(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, internal.URL+"/admin", http.StatusTemporaryRedirect)
	})
	c := egress.NewClient(egress.Options{AllowLoopback: true, Timeout: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := get(ctx, c, public.URL+"/push/abc")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("status %d, want the 307 itself", resp.StatusCode)
	}
	if n := internalHits.Load(); n != 0 {
		t.Fatalf("the redirect target got %d requests", n)
	}
}

// A response body longer than the limit fails to read past it.
func TestResponseBodyBounded(t *testing.T) {
	t.Parallel()
	srv, _ := counted(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("a", 1000)))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct {
		max  int64
		want error
	}{{max: 100, want: egress.ErrResponseTooLarge}, {max: 1000}} {
		client := egress.NewClient(egress.Options{AllowLoopback: true, MaxResponseBytes: c.max})
		resp, err := get(ctx, client, srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !errors.Is(err, c.want) || int64(len(b)) > c.max {
			t.Fatalf("limit %d: read %d bytes, %v; want at most the limit and %v", c.max, len(b), err, c.want)
		}
	}
}
