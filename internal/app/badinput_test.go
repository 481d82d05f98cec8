package app_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// Every kind of bad input gets its documented status and error code, never a
// 5xx, and the service keeps serving.
func TestBadInput(t *testing.T) {
	ta := startApp(t, nil)
	secret := []byte(ta.cfg.JWTSecret)
	good, err := auth.Sign(secret, "urn:sm:user:mallory", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := auth.Sign(secret, "urn:sm:user:mallory", time.Minute, time.Now().Add(-time.Hour))
	wrongKey, _ := auth.Sign([]byte("another-secret-0123456789-0123456789"), "urn:sm:user:mallory", time.Hour, time.Now())
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{
		"sub": "urn:sm:user:mallory", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "urn:sm:user:mallory"}).SignedString(secret)
	badSub, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString(secret)

	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	msg := func(recipient, payload string) string {
		return `{"recipient":"` + recipient + `","payload":"` + payload + `"}`
	}
	maxPayload := ta.cfg.API.MaxPayloadBytes
	cases := []struct {
		name, method, path, ctype, body, token string
		status                                 int
		code                                   string
	}{
		{"malformed json", "POST", "/v1/messages", "application/json", `{"recipient":`, good, 400, "malformed_json"},
		{"json of wrong shape", "POST", "/v1/messages", "application/json", `{"recipient":42}`, good, 400, "malformed_json"},
		{"trailing data", "POST", "/v1/messages", "application/json", msg("urn:sm:user:bob", "AA==") + "{}", good, 400, "malformed_json"},
		{"empty body", "POST", "/v1/messages", "application/json", ``, good, 400, "malformed_json"},
		{"wrong content type", "POST", "/v1/messages", "text/plain", msg("urn:sm:user:bob", "AA=="), good, 415, "unsupported_media_type"},
		{"no content type", "POST", "/v1/messages", "", msg("urn:sm:user:bob", "AA=="), good, 415, "unsupported_media_type"},
		{"bad urn", "POST", "/v1/messages", "application/json", msg("bob", "AA=="), good, 400, "invalid_recipient"},
		{"bad urn namespace", "POST", "/v1/messages", "application/json", msg("urn:SM:user:bob", "AA=="), good, 400, "invalid_recipient"},
		{"bad urn id", "POST", "/v1/messages", "application/json", msg("urn:sm:user:bob/evil", "AA=="), good, 400, "invalid_recipient"},
		{"urn too long", "POST", "/v1/messages", "application/json", msg("urn:sm:user:"+strings.Repeat("a", 129), "AA=="), good, 400, "invalid_recipient"},
		{"bad base64", "POST", "/v1/messages", "application/json", msg("urn:sm:user:bob", "!!!"), good, 400, "invalid_payload"},
		{"url base64", "POST", "/v1/messages", "application/json", msg("urn:sm:user:bob", "-_-_"), good, 400, "invalid_payload"},
		{"missing payload", "POST", "/v1/messages", "application/json", `{"recipient":"urn:sm:user:bob"}`, good, 400, "invalid_payload"},
		{"type too long", "POST", "/v1/messages", "application/json", `{"recipient":"urn:sm:user:bob","payload":"AA==","type":"` + strings.Repeat("t", 65) + `"}`, good, 400, "invalid_parameter"},
		{"bad idempotency key", "POST", "/v1/messages", "application/json", `{"recipient":"urn:sm:user:bob","payload":"AA==","idempotency_key":"a b"}`, good, 400, "invalid_parameter"},
		{"payload over limit", "POST", "/v1/messages", "application/json", msg("urn:sm:user:bob", b64(maxPayload+1)), good, 413, "payload_too_large"},
		{"body over limit", "POST", "/v1/messages", "application/json", msg("urn:sm:user:bob", "AA==") + strings.Repeat(" ", int(ta.cfg.API.MaxBodyBytes)), good, 413, "body_too_large"},
		{"no token", "POST", "/v1/messages", "application/json", msg("urn:sm:user:bob", "AA=="), "", 401, "unauthorized"},
		{"garbage token", "POST", "/v1/messages", "application/json", msg("urn:sm:user:bob", "AA=="), "not.a.jwt", 401, "unauthorized"},
		{"expired token", "GET", "/v1/messages", "", "", expired, 401, "unauthorized"},
		{"wrongly signed token", "GET", "/v1/messages", "", "", wrongKey, 401, "unauthorized"},
		{"alg none token", "GET", "/v1/messages", "", "", none, 401, "unauthorized"},
		{"token without exp", "GET", "/v1/messages", "", "", noExp, 401, "unauthorized"},
		{"token with bad sub", "GET", "/v1/messages", "", "", badSub, 401, "unauthorized"},
		{"limit zero", "GET", "/v1/messages?limit=0", "", "", good, 400, "invalid_parameter"},
		{"limit too big", "GET", "/v1/messages?limit=501", "", "", good, 400, "invalid_parameter"},
		{"limit not a number", "GET", "/v1/messages?limit=ten", "", "", good, 400, "invalid_parameter"},
		{"bad cursor", "GET", "/v1/messages?after=zzz", "", "", good, 400, "invalid_parameter"},
		{"ack no ids", "POST", "/v1/messages/ack", "application/json", `{"ids":[]}`, good, 400, "invalid_parameter"},
		{"ack too many ids", "POST", "/v1/messages/ack", "application/json", `{"ids":[` + strings.Repeat(`"x",`, 500) + `"x"]}`, good, 400, "invalid_parameter"},
		{"ack malformed", "POST", "/v1/messages/ack", "application/json", `{"ids":"x"}`, good, 400, "malformed_json"},
		{"device bad platform", "PUT", "/v1/devices", "application/json", `{"platform":"blackberry","token":"x"}`, good, 400, "invalid_device"},
		{"device no token", "PUT", "/v1/devices", "application/json", `{"platform":"android"}`, good, 400, "invalid_device"},
		{"device bad apns token", "PUT", "/v1/devices", "application/json", `{"platform":"apns","token":"not-hex"}`, good, 400, "invalid_device"},
		{"device webpush without keys", "PUT", "/v1/devices", "application/json", `{"platform":"webpush","subscription":{"endpoint":"https://push.example.com/x"}}`, good, 400, "invalid_device"},
		{"device webpush http endpoint", "PUT", "/v1/devices", "application/json", `{"platform":"webpush","subscription":{"endpoint":"http://push.example.com/x","keys":{"p256dh":"x","auth":"y"}}}`, good, 400, "invalid_device"},
		{"unknown path", "GET", "/v1/nothing", "", "", good, 404, "not_found"},
		{"unknown root path", "GET", "/admin", "", "", "", 404, "not_found"},
		{"wrong method", "DELETE", "/v1/messages", "", "", good, 405, "method_not_allowed"},
		{"wrong method on ack", "GET", "/v1/messages/ack", "", "", good, 405, "method_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, ta.apiURL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			raw, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatalf("error body is not JSON: %q", raw)
			}
			if resp.StatusCode != tc.status || body.Error.Code != tc.code || body.Error.Message == "" {
				t.Fatalf("got %d %s (%q), want %d %s", resp.StatusCode, body.Error.Code, body.Error.Message, tc.status, tc.code)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("content type %q", ct)
			}
		})
	}
	if code := get(t, ta.opsURL+"/healthz"); code != 200 {
		t.Fatalf("service stopped serving: %d", code)
	}
	// And a good request still works.
	c := ta.client(t, "urn:sm:user:mallory")
	if _, err := c.Fetch(ctxT(t), "", 1); err != nil {
		t.Fatal(err)
	}
}

// WebSocket upgrades are refused with the documented statuses, oversized
// frames close with 1009, bad frames get error frames, and acks of other
// users' ids remove nothing.
func TestWebSocketBadInput(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.Realtime.AllowedOrigins = []string{"https://chat.example.com"} })
	secret := []byte(ta.cfg.JWTSecret)
	tok, _ := auth.Sign(secret, "urn:sm:user:mallory", time.Hour, time.Now())
	wsURL := ta.wsURL + "/v1/connect"

	dial := func(h http.Header, url string) (*websocket.Conn, *http.Response, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	}
	t.Run("no token", func(t *testing.T) {
		_, resp, err := dial(nil, wsURL)
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("got %v %v", resp, err)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		_, resp, err := dial(http.Header{"Authorization": {"Bearer x.y.z"}}, wsURL)
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("got %v %v", resp, err)
		}
	})
	t.Run("origin not allowed", func(t *testing.T) {
		_, resp, err := dial(http.Header{"Authorization": {"Bearer " + tok}, "Origin": {"https://evil.example.com"}}, wsURL)
		if err == nil || resp == nil || resp.StatusCode != 403 {
			t.Fatalf("got %v %v", resp, err)
		}
	})
	t.Run("allowed origin and query token", func(t *testing.T) {
		c, _, err := dial(http.Header{"Origin": {"https://chat.example.com"}}, wsURL+"?access_token="+tok)
		if err != nil {
			t.Fatal(err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("oversized frame closes with 1009", func(t *testing.T) {
		c, _, err := dial(http.Header{"Authorization": {"Bearer " + tok}}, wsURL)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Write(ctx, websocket.MessageText, make([]byte, ta.cfg.Realtime.MaxFrameBytes+1))
		_, _, err = c.Read(ctx)
		if got := websocket.CloseStatus(err); got != websocket.StatusMessageTooBig {
			t.Fatalf("close status %v (%v), want 1009", got, err)
		}
	})
	t.Run("bad frames get error frames", func(t *testing.T) {
		c, _, err := dial(http.Header{"Authorization": {"Bearer " + tok}}, wsURL)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, f := range []struct{ frame, code string }{
			{`{"type":`, "malformed_json"},
			{`{"type":"subscribe"}`, "bad_request"},
			{`{"type":"ack","ids":[]}`, "invalid_parameter"},
		} {
			if err := c.Write(ctx, websocket.MessageText, []byte(f.frame)); err != nil {
				t.Fatal(err)
			}
			_, data, err := c.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var e struct {
				Type  string
				Error struct{ Code string }
			}
			if json.Unmarshal(data, &e); e.Type != "error" || e.Error.Code != f.code {
				t.Fatalf("frame %s: got %s", f.frame, data)
			}
		}
	})
	t.Run("ack of another user's id removes nothing", func(t *testing.T) {
		alice := ta.client(t, "urn:sm:user:alice")
		victim := ta.client(t, "urn:sm:user:victim")
		acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:victim", Payload: []byte("p")})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "stored", func() bool {
			p, err := victim.Fetch(ctxT(t), "", 10)
			return err == nil && len(p.Messages) == 1
		})
		mallory := ta.client(t, "urn:sm:user:mallory")
		conn, err := mallory.Connect(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := conn.Ack(ctxT(t), acc.ID); err != nil {
			t.Fatal(err)
		}
		if err := mallory.Ack(ctxT(t), acc.ID); err != nil {
			t.Fatal(err)
		}
		// Frames on one connection are handled in order: an ack sent after
		// the first has been processed once this bad frame's error comes back.
		if err := conn.WriteRaw(ctxT(t), []byte(`{"type":"nope"}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Next(ctxT(t)); err == nil {
			t.Fatal("want an error frame")
		}
		p, err := victim.Fetch(ctxT(t), "", 10)
		if err != nil || len(p.Messages) != 1 || p.Messages[0].ID != acc.ID {
			t.Fatalf("victim's message was removed: %+v %v", p, err)
		}
	})
	if code := get(t, ta.opsURL+"/healthz"); code != 200 {
		t.Fatalf("service stopped serving: %d", code)
	}
}

// Over the per-user rate limit: 429 with Retry-After; other users are not affected.
func TestRateLimit(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.API.RateLimit, c.API.RateBurst = 0.5, 3 })
	mallory := ta.client(t, "urn:sm:user:mallory")
	for i := 0; i < 3; i++ {
		if _, err := mallory.Fetch(ctxT(t), "", 1); err != nil {
			t.Fatalf("request %d within the burst: %v", i, err)
		}
	}
	_, err := mallory.Fetch(ctxT(t), "", 1)
	e := apiErr(t, err)
	if e.Status != 429 || e.Code != "rate_limited" || e.RetryAfter < time.Second {
		t.Fatalf("got %+v, want 429 rate_limited with Retry-After", e)
	}
	if _, err := ta.client(t, "urn:sm:user:trent").Fetch(ctxT(t), "", 1); err != nil {
		t.Fatalf("another user was limited: %v", err)
	}
}
