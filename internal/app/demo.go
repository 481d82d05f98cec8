package app

import (
	"net"
	"slices"
	"strconv"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/demo"
)

// demoEnabled reports whether this instance serves the browser demo: when
// demo.enabled is set (config.Check refuses it elsewhere), in local mode
// only, on a loopback API listener, when it runs both the API and the
// WebSocket server and signs tokens with a secret (the demo's development
// tokens are HS256).
func (a *App) demoEnabled() bool {
	c := a.cfg
	return c.Demo.Enabled && c.RunMode == config.ModeLocal && config.LoopbackListen(c.API.Listen) &&
		c.Has(config.RoleAPI) && c.Has(config.RoleRealtime) &&
		c.JWTSecret != "" && slices.Contains(c.Auth.Algorithms, "HS256")
}

// mountDemo routes /demo/ and /demo/token on the API router.
func (a *App) mountDemo(rt *api.Router) error {
	_, wsPort, err := net.SplitHostPort(a.WSAddr())
	if err != nil {
		return err
	}
	return demo.Mount(rt, demo.Options{Secret: []byte(a.cfg.JWTSecret), WSPort: wsPort})
}

// demoURL is the address of the demo's page on the API listener.
func (a *App) demoURL() string {
	return "http://" + a.APIAddr() + "/demo/"
}

// demoOrigins are the origins the demo page is loaded from (the API
// listener's port on the loopback names); the WebSocket server on its other
// port allows them in local mode.
func demoOrigins(apiAddr net.Addr) []string {
	port := ""
	if tcp, ok := apiAddr.(*net.TCPAddr); ok {
		port = strconv.Itoa(tcp.Port)
	}
	return []string{"http://localhost:" + port, "http://127.0.0.1:" + port, "http://[::1]:" + port}
}
