package app_test

import (
	"strings"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// With realtime.listen empty, /v1/connect is served on the API listener,
// and a session there outlives the API server's request timeouts.
func TestOnePort(t *testing.T) {
	ta := startApp(t, func(c *config.Config) {
		c.Realtime.Listen = ""
		c.API.ReadTimeout = 500 * time.Millisecond
		c.API.WriteTimeout = 500 * time.Millisecond
	})
	if ta.wsURL != strings.Replace(ta.apiURL, "http://", "ws://", 1) {
		t.Fatalf("websocket at %s, api at %s: want one port", ta.wsURL, ta.apiURL)
	}
	alice := ta.client(t, "urn:sm:user:alice")
	bob := ta.client(t, "urn:sm:user:bob")
	conn := connect(t, bob)
	connected(t, ta, 1)
	// Past both API timeouts: the session must still carry messages both ways.
	time.Sleep(1500 * time.Millisecond)
	acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:bob", Payload: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if env := next(t, conn); env.ID != acc.ID {
		t.Fatalf("got %s, want %s", env.ID, acc.ID)
	}
	if err := conn.Ack(ctxT(t), acc.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "acked", func() bool {
		p, err := bob.Fetch(ctxT(t), "", 10)
		return err == nil && len(p.Messages) == 0
	})
}

// realtime.listen empty needs the api role in the same instance.
func TestOnePortNeedsAPIRole(t *testing.T) {
	c := config.Default()
	c.JWTSecret = "test-secret-0123456789-0123456789-abcdef"
	c.Roles = []string{config.RoleRealtime}
	c.Realtime.Listen = ""
	c.FillDefaults()
	err := c.Check()
	if err == nil || !strings.Contains(err.Error(), "realtime.listen") {
		t.Fatalf("Check: %v; want an error naming realtime.listen", err)
	}
}
