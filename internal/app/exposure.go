package app

import "github.com/go-routing-service/routingservice/internal/config"

// logExposure says at start what the configuration opens beyond this
// machine: listeners on other than loopback addresses (a warning in local
// mode, where loopback is the default; expected in production), links
// without TLS or credentials (insecure_links), and the demo, whose token
// endpoint signs in as anyone.
func (a *App) logExposure() {
	cfg := a.cfg
	listeners := []struct{ key, addr, what string }{
		{"api.listen", cfg.API.Listen, "the API"},
		{"realtime.listen", cfg.Realtime.Listen, "the WebSocket server"},
		{"ops.listen", cfg.Ops.Listen, "/healthz, /readyz and /metrics"},
	}
	for _, l := range listeners {
		bound := l.key == "ops.listen" && a.opsLn != nil ||
			l.key == "api.listen" && a.apiLn != nil ||
			l.key == "realtime.listen" && a.rtLn != nil
		if !bound || config.LoopbackListen(l.addr) {
			continue
		}
		msg := l.key + " is not a loopback address: " + l.what + " is reachable from other machines"
		if cfg.RunMode == config.ModeLocal {
			a.log.Warn(msg+" (local mode listens on loopback unless told otherwise)", "key", l.key, "addr", l.addr)
		} else {
			a.log.Info(msg, "key", l.key, "addr", l.addr)
		}
	}
	if cfg.InsecureLinks && cfg.RunMode == config.ModeProduction {
		a.log.Warn("insecure_links: links to NATS, Redis and PostgreSQL may run without TLS or credentials; " +
			"only for a private network that nothing but the instances and the engines reach")
	}
	if a.demoEnabled() {
		a.log.Warn("demo on: open the url in a browser; its /demo/token signs a token for any user (local development only)",
			"url", a.demoURL())
	}
}
