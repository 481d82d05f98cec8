package realtime

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// defaultOptions are the realtime options of the shipped defaults
// (DefaultConfig), as the service wires them.
func defaultOptions() Options {
	c := DefaultConfig()
	return Options{
		Config: Config{
			AllowedOrigins:      c.AllowedOrigins,
			AllowedHosts:        c.AllowedHosts,
			TrustedProxyHops:    c.TrustedProxyHops,
			MaxConns:            c.MaxConns,
			MaxConnsPerIP:       c.MaxConnsPerIP,
			ConnectRatePerIP:    c.ConnectRatePerIP,
			ConnectBurstPerIP:   c.ConnectBurstPerIP,
			ConnectRatePerUser:  c.ConnectRatePerUser,
			ConnectBurstPerUser: c.ConnectBurstPerUser,
			AckRate:             c.AckRate,
			AckBurst:            c.AckBurst,
			MaxFrameBytes:       c.MaxFrameBytes,
			PingInterval:        c.PingInterval,
			PongTimeout:         c.PongTimeout,
			WriteTimeout:        c.WriteTimeout,
			SendQueue:           c.SendQueue,
		},
	}
}

// attempt makes one upgrade request to the WebSocket endpoint at url (ws://)
// with token (none when empty) and returns the answer's status; a 101
// connection is closed at once.
func attempt(t *testing.T, client *http.Client, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http"+strings.TrimPrefix(url, "ws"), nil)
	if err != nil {
		t.Error(err)
		return 0
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Error(err)
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// parallel runs f(i) for i in [0, n) on workers goroutines and waits.
func parallel(n, workers int, f func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// statuses counts answers by status.
type statuses struct {
	mu sync.Mutex
	n  map[int]int
}

func (s *statuses) add(code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[int]int{}
	}
	s.n[code]++
}

// A flood of attempts without a token from one address spends that
// address's budget, and only it: clients with a valid token from the same
// address, connecting during the flood, all connect. With the defaults.
func TestFailedAttemptsNeverLockOutValidTokens(t *testing.T) {
	o := defaultOptions()
	s, _, url := newServer(t, o)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	t.Cleanup(client.CloseIdleConnections)
	budget := o.ConnectBurstPerIP

	// The flood alone: it exhausts the address's budget.
	var before statuses
	parallel(6*budget, 16, func(int) { before.add(attempt(t, client, url, "")) })
	if before.n[http.StatusTooManyRequests] == 0 || before.n[http.StatusUnauthorized]+before.n[http.StatusTooManyRequests] != 6*budget {
		t.Fatalf("flood of %d attempts without a token: %v, want 401s then 429s", 6*budget, before.n)
	}

	// The flood goes on, forged tokens too, while valid clients connect
	// from the same address.
	const valid = 60
	var flood statuses
	var forged statuses
	var refusedValid []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		parallel(6*budget, 8, func(int) { flood.add(attempt(t, client, url, "")) })
	}()
	go func() {
		defer wg.Done()
		parallel(2*budget, 4, func(int) { forged.add(attempt(t, client, url, "bad")) })
	}()
	go func() {
		defer wg.Done()
		parallel(valid, 8, func(i int) {
			user := fmt.Sprintf("urn:sm:user:valid-%d", i)
			c, resp, err := tryDial(t, url, bearer(user), "")
			if err != nil {
				status := 0
				if resp != nil {
					status = resp.StatusCode
				}
				mu.Lock()
				refusedValid = append(refusedValid, fmt.Sprintf("%s: %d %v", user, status, err))
				mu.Unlock()
				return
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	}()
	wg.Wait()
	if len(refusedValid) > 0 {
		t.Fatalf("%d of %d clients with a valid token refused during the flood: %v", len(refusedValid), valid, refusedValid)
	}
	if flood.n[http.StatusUnauthorized]+flood.n[http.StatusTooManyRequests] != 6*budget || flood.n[http.StatusTooManyRequests] == 0 {
		t.Fatalf("flood answers %v, want only 401 and 429", flood.n)
	}
	// A token that fails verification is told so (its client renews it),
	// whatever its address has spent.
	if forged.n[http.StatusUnauthorized] != 2*budget {
		t.Fatalf("forged tokens answered %v, want only 401", forged.n)
	}
	refusedTotal := testutil.ToFloat64(s.refusals.WithLabelValues(refusedRateIP)) + testutil.ToFloat64(s.refusals.WithLabelValues(refusedUnauthenticated))
	if want := float64(14 * budget); refusedTotal != want {
		t.Fatalf("refused rate_ip + unauthenticated = %v, want every flood attempt (%v)", refusedTotal, want)
	}
}

// Carrier-grade NAT puts thousands of people behind one IPv4 address:
// with the defaults, 300 users with valid tokens from one address all
// connect and stay connected together.
func TestCarrierGradeNATWithDefaults(t *testing.T) {
	const users = 300
	_, m, url := newServer(t, defaultOptions())
	conns := make([]*websocket.Conn, users)
	var mu sync.Mutex
	var refused []string
	parallel(users, 8, func(i int) {
		user := fmt.Sprintf("urn:sm:user:nat-%d", i)
		c, resp, err := tryDial(t, url, bearer(user), "")
		if err != nil {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			mu.Lock()
			refused = append(refused, fmt.Sprintf("%s: %d", user, status))
			mu.Unlock()
			return
		}
		conns[i] = c
	})
	if len(refused) > 0 {
		t.Fatalf("%d of %d users behind one address refused: %v", len(refused), users, refused[:min(len(refused), 10)])
	}
	waitFor(t, "every connection registered", func() bool { return testutil.ToFloat64(m.WSConnections) == users })
}

// Each refusal of an upgrade counts once in routing_websocket_refused_total
// under its reason, and under no other.
func TestRefusedConnectionsAreCountedByReason(t *testing.T) {
	upgrade := func(h http.Header) http.Header {
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", "websocket")
		h.Set("Sec-WebSocket-Version", "13")
		h.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		return h
	}
	cases := []struct {
		reason string
		opts   Options
		// refuse makes the refused attempt (after any setup) and returns
		// its status.
		refuse func(t *testing.T, s *Server, url string) int
		want   int
	}{
		{refusedOrigin, Options{Config: Config{AllowedHosts: []string{"127.0.0.1"}}}, func(t *testing.T, _ *Server, url string) int {
			h := bearer("urn:sm:user:a")
			h.Set("Origin", "https://evil.example")
			return dialStatus(t, url, h, "")
		}, http.StatusForbidden},
		{refusedHost, Options{Config: Config{AllowedOrigins: []string{"https://app.example"}, AllowedHosts: []string{"127.0.0.1"}}}, func(t *testing.T, _ *Server, url string) int {
			h := bearer("urn:sm:user:a")
			h.Set("Origin", "https://app.example")
			return dialStatus(t, url, h, "rebound.example")
		}, http.StatusForbidden},
		{refusedUnauthenticated, Options{}, func(t *testing.T, _ *Server, url string) int {
			return dialStatus(t, url, http.Header{}, "")
		}, http.StatusUnauthorized},
		{refusedRateIP, Options{Config: Config{ConnectRatePerIP: 0.001, ConnectBurstPerIP: 1}}, func(t *testing.T, s *Server, url string) int {
			if got := dialStatus(t, url, http.Header{}, ""); got != http.StatusUnauthorized {
				t.Fatalf("first attempt without a token: %d, want 401", got)
			}
			if got := testutil.ToFloat64(s.refusals.WithLabelValues(refusedUnauthenticated)); got != 1 {
				t.Fatalf("unauthenticated = %v after one attempt without a token, want 1", got)
			}
			s.refusals.Reset()
			return dialStatus(t, url, http.Header{}, "")
		}, http.StatusTooManyRequests},
		{refusedRateUser, Options{Config: Config{ConnectRatePerUser: 0.001, ConnectBurstPerUser: 1}}, func(t *testing.T, _ *Server, url string) int {
			dial(t, url, "urn:sm:user:a")
			return dialStatus(t, url, bearer("urn:sm:user:a"), "")
		}, http.StatusTooManyRequests},
		{refusedConnsPerUser, Options{}, func(t *testing.T, s *Server, url string) int {
			for range s.o.MaxConnsPerUser {
				dial(t, url, "urn:sm:user:a")
			}
			return dialStatus(t, url, bearer("urn:sm:user:a"), "")
		}, http.StatusTooManyRequests},
		{refusedConnsPerIP, Options{Config: Config{MaxConnsPerIP: 1}}, func(t *testing.T, _ *Server, url string) int {
			dial(t, url, "urn:sm:user:a")
			return dialStatus(t, url, bearer("urn:sm:user:b"), "")
		}, http.StatusTooManyRequests},
		{refusedMaxConns, Options{Config: Config{MaxConns: 1}}, func(t *testing.T, _ *Server, url string) int {
			dial(t, url, "urn:sm:user:a")
			return dialStatus(t, url, bearer("urn:sm:user:b"), "")
		}, http.StatusServiceUnavailable},
		{refusedShuttingDown, Options{}, func(t *testing.T, s *Server, url string) int {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			return dialStatus(t, url, bearer("urn:sm:user:a"), "")
		}, http.StatusServiceUnavailable},
		{refusedHandshake, Options{}, func(t *testing.T, _ *Server, url string) int {
			return plainStatus(t, url, bearer("urn:sm:user:a")) // no upgrade headers: 426
		}, http.StatusUpgradeRequired},
		{refusedHandshake, Options{}, func(t *testing.T, _ *Server, url string) int {
			h := upgrade(bearer("urn:sm:user:a"))
			h.Set("Sec-WebSocket-Version", "8")
			return plainStatus(t, url, h)
		}, http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s %d", tc.reason, tc.want), func(t *testing.T) {
			s, _, url := newServer(t, tc.opts)
			if s.refusals == nil {
				t.Fatal("no refusal counter")
			}
			if got := tc.refuse(t, s, url); got != tc.want {
				t.Fatalf("refused with %d, want %d", got, tc.want)
			}
			for _, r := range refusedReasons {
				want := 0.0
				if r == tc.reason {
					want = 1
				}
				if got := testutil.ToFloat64(s.refusals.WithLabelValues(r)); got != want {
					t.Errorf("routing_websocket_refused_total{reason=%q} = %v, want %v", r, got, want)
				}
			}
		})
	}
}

// The refusal counter is on the service's registry, every reason at zero
// from the start; a second server on the same registry shares it.
func TestRefusedCounterIsRegistered(t *testing.T) {
	s, m, _ := newServer(t, Options{})
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var series int
	for _, f := range families {
		if f.GetName() == "routing_websocket_refused_total" {
			series = len(f.GetMetric())
		}
	}
	if series != len(refusedReasons) {
		t.Fatalf("routing_websocket_refused_total has %d series, want one per reason (%d)", series, len(refusedReasons))
	}
	other := New(Options{Metrics: m}, emptyStore{}, nil, testAuth)
	other.refused(refusedHost)
	if got := testutil.ToFloat64(s.refusals.WithLabelValues(refusedHost)); got != 1 {
		t.Fatalf("a second server's refusal counted %v on the shared registry, want 1", got)
	}
}

// The server counts its per-address limits under the client address its
// options name: the Nth X-Forwarded-For entry from the right behind N
// trusted hops, the peer otherwise.
func TestServerUsesTrustedProxies(t *testing.T) {
	cases := []struct {
		name        string
		o           Options
		remote, xff string
		want        string
	}{
		{"direct", Options{}, "203.0.113.5:4000", "6.6.6.6", "203.0.113.5"},
		{"gcp", Options{Config: Config{TrustedProxies: []string{"35.191.0.0/16"}, TrustedProxyHops: 2}},
			"35.191.3.4:5000", "6.6.6.6, 198.51.100.7, 34.120.1.1", "198.51.100.7"},
		{"cidr", Options{Config: Config{TrustedProxies: []string{"10.0.0.0/8"}}},
			"10.1.2.3:4000", "6.6.6.6, 198.51.100.1, 10.9.9.9", "198.51.100.1"},
		{"IPv6 as its /64", Options{Config: Config{TrustedProxyHops: 1}}, "10.1.2.3:4000", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
	}
	for _, tc := range cases {
		s := New(tc.o, emptyStore{}, nil, testAuth)
		r, _ := http.NewRequest(http.MethodGet, "/v1/connect", nil)
		r.RemoteAddr = tc.remote
		r.Header.Set("X-Forwarded-For", tc.xff)
		if got := s.proxies.LimitKey(r); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// dialStatus dials with h (and a Host override) and returns the refusal's
// status (0 when it connected).
func dialStatus(t *testing.T, url string, h http.Header, host string) int {
	t.Helper()
	c, resp, err := tryDial(t, url, h, host)
	if err == nil {
		c.CloseNow()
		return 0
	}
	if resp == nil {
		t.Fatalf("no answer: %v", err)
	}
	return resp.StatusCode
}

// plainStatus sends a GET with h as it is (no WebSocket client) and
// returns the status.
func plainStatus(t *testing.T, url string, h http.Header) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http"+strings.TrimPrefix(url, "ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
