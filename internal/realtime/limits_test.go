package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// tryDial opens a connection with headers h and optional Host override;
// it returns the connection or the refusal.
func tryDial(t *testing.T, url string, h http.Header, host string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h, Host: host})
	if c != nil {
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// errorCode reads the JSON error code of a refused upgrade.
func errorCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	if resp == nil {
		t.Fatal("no HTTP answer")
	}
	var body struct {
		Error struct{ Code string } `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("%d answer is not the JSON error shape: %q", resp.StatusCode, b)
	}
	return body.Error.Code
}

// A session ends when its token does (exp plus leeway): the server closes
// it with 1008 "token expired", so a revoked user's stolen token cannot keep
// a connection open forever.
func TestSessionEndsWhenItsTokenExpires(t *testing.T) {
	_, m, url := newServer(t, Options{Leeway: time.Second})
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	c := dial(t, url, fmt.Sprintf("urn:sm:user:brief|%d", exp.Unix()))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, _, err := c.Read(ctx) // the close arrives, no message before it
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "token expired" {
		t.Fatalf("read ended with %v, want close 1008 token expired", err)
	}
	if now := time.Now(); now.Before(exp.Add(time.Second)) {
		t.Fatalf("closed at %v, before exp %v plus the leeway", now, exp)
	}
	if got := testutil.ToFloat64(m.WSDropped.WithLabelValues("token_expired")); got != 1 {
		t.Fatalf("token_expired drops = %v, want 1", got)
	}
}

func TestOrigins(t *testing.T) {
	_, _, url := newServer(t, Options{
		Config: Config{
			AllowedOrigins: []string{"https://app.example", "https://*.chat.example"},
			AllowedHosts:   []string{"127.0.0.1", "ws.example"},
		},
	})
	port := url[strings.LastIndex(url, ":")+1 : strings.Index(url, "/v1/")]
	cases := []struct {
		name, origin, host string
		want               int // 0: connected
	}{
		{"no origin (not a browser)", "", "", 0},
		{"no origin, any host", "", "other.example", 0},
		{"listed origin", "https://app.example", "", 0},
		{"listed origin by an allowed name", "https://app.example", "ws.example", 0},
		{"wildcard origin", "https://eu.chat.example", "", 0},
		{"same host", "http://127.0.0.1:" + port, "", 0},
		{"unlisted origin", "https://evil.example", "", http.StatusForbidden},
		{"listed host, other scheme", "http://app.example", "", http.StatusForbidden},
		{"suffix trick", "https://app.example.evil.example", "", http.StatusForbidden},
		// DNS rebinding: evil.example now resolves to this server; the
		// page's origin equals the Host it connects by.
		{"rebound name as same host", "http://evil.example:" + port, "evil.example:" + port, http.StatusForbidden},
		{"listed origin by a rebound name", "https://app.example", "evil.example:" + port, http.StatusForbidden},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := bearer(fmt.Sprintf("urn:sm:user:o%d", i))
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			c, resp, err := tryDial(t, url, h, tc.host)
			if tc.want == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				c.Close(websocket.StatusNormalClosure, "")
				return
			}
			if err == nil || resp == nil || resp.StatusCode != tc.want {
				t.Fatalf("got %v %v, want %d", resp, err, tc.want)
			}
			if code := errorCode(t, resp); code != "origin_not_allowed" {
				t.Fatalf("error code %q, want origin_not_allowed", code)
			}
		})
	}
}

func TestConnectionCaps(t *testing.T) {
	t.Run("per address", func(t *testing.T) {
		_, _, url := newServer(t, Options{Config: Config{MaxConnsPerIP: 2}})
		dial(t, url, "urn:sm:user:a")
		dial(t, url, "urn:sm:user:b")
		_, resp, err := tryDial(t, url, bearer("urn:sm:user:c"), "")
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("third connection from one address: %v %v", resp, err)
		}
	})
	t.Run("global", func(t *testing.T) {
		_, m, url := newServer(t, Options{Config: Config{MaxConns: 2}})
		a := dial(t, url, "urn:sm:user:a")
		dial(t, url, "urn:sm:user:b")
		_, resp, err := tryDial(t, url, bearer("urn:sm:user:c"), "")
		if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("third connection: %v %v", resp, err)
		}
		// A closed connection frees its place.
		waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 2 })
		a.Close(websocket.StatusNormalClosure, "")
		waitFor(t, "the freed place", func() bool {
			c, _, err := tryDial(t, url, bearer("urn:sm:user:c"), "")
			if err == nil {
				c.CloseNow()
			}
			return err == nil
		})
	})
}

func TestConnectRates(t *testing.T) {
	t.Run("per address", func(t *testing.T) {
		// Attempts without a valid token spend the address's budget: a
		// scan is slowed. Past it, an attempt without a token gets 429; a
		// token is still verified, so a bad one gets 401 (its client
		// renews it) and a good one connects.
		_, _, url := newServer(t, Options{Config: Config{ConnectRatePerIP: 0.01, ConnectBurstPerIP: 3}})
		for i := 0; i < 3; i++ {
			if _, resp, _ := tryDial(t, url, bearer("bad"), ""); resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("attempt %d: %v", i, resp)
			}
		}
		_, resp, err := tryDial(t, url, http.Header{}, "")
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("fourth attempt, without a token: %v %v", resp, err)
		}
		if _, resp, _ := tryDial(t, url, bearer("bad"), ""); resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a bad token past the budget: %v, want 401", resp)
		}
		if _, resp, err := tryDial(t, url, bearer("urn:sm:user:a"), ""); err != nil {
			t.Fatalf("a valid token past the address's budget: %v %v", resp, err)
		}
	})
	t.Run("per user", func(t *testing.T) {
		_, _, url := newServer(t, Options{Config: Config{ConnectRatePerUser: 0.01, ConnectBurstPerUser: 2}})
		for i := 0; i < 2; i++ {
			c := dial(t, url, "urn:sm:user:flappy")
			c.Close(websocket.StatusNormalClosure, "")
		}
		_, resp, err := tryDial(t, url, bearer("urn:sm:user:flappy"), "")
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("third connect of one user: %v %v", resp, err)
		}
		// Another user is not affected.
		dial(t, url, "urn:sm:user:calm")
	})
}

// countingStore counts acks applied.
type countingStore struct {
	emptyStore
	acks chan int
}

func (s countingStore) Ack(_ context.Context, _ string, ids []string) (int, error) {
	s.acks <- len(ids)
	return len(ids), nil
}

// Ack frames over the rate are answered with rate_limited and not applied;
// the connection stays usable.
func TestAckFramesAreRateLimited(t *testing.T) {
	st := countingStore{acks: make(chan int, 100)}
	_, _, url := newServerWith(t, Options{Config: Config{AckRate: 0.01, AckBurst: 3}}, st)
	c := dial(t, url, "urn:sm:user:acker")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 5; i++ {
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"type":"ack","ids":["x"]}`)); err != nil {
			t.Fatal(err)
		}
	}
	limited := 0
	for limited < 2 {
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v (after %d rate_limited frames)", err, limited)
		}
		var f errorFrame
		if err := json.Unmarshal(data, &f); err != nil || f.Type != "error" || f.Error.Code != "rate_limited" {
			t.Fatalf("unexpected frame %s", data)
		}
		limited++
	}
	if got := len(st.acks); got != 3 {
		t.Fatalf("%d acks applied, want the burst of 3", got)
	}
}
