package app_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
)

// A WebSocket session lasts as long as its token: past exp (plus the
// leeway) the server closes it with 1008 "token expired", so a token that
// has run out no longer receives anyone's messages.
func TestSessionEndsWithItsToken(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.Auth.Leeway = time.Second })
	now := time.Now()
	tok, err := auth.Sign([]byte(ta.cfg.JWTSecret), "urn:sm:user:brief", 2*time.Second, now)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, ta.wsURL+"/v1/connect", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	_, _, err = c.Read(ctx) // no backlog: the next thing is the close
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "token expired" {
		t.Fatalf("read ended with %v, want close 1008 token expired", err)
	}
}

// A client that sends its request headers slowly (or never) is cut off at
// realtime.read_header_timeout instead of holding a connection forever.
func TestWebSocketPortCutsSlowHeaders(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.Realtime.ReadHeaderTimeout = 300 * time.Millisecond })
	conn, err := net.Dial("tcp", ta.app.WSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /v1/connect HTTP/1.1\r\nHost: 127.0.0.1\r\n")); err != nil {
		t.Fatal(err)
	}
	// A bound on the test only; the server must close well before it.
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept a connection with unfinished headers open")
	}
}
