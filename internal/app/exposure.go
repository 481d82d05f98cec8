package app

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/go-routing-service/routingservice/internal/config"
)

// prepareDataDir makes the data dir (mode 0700) where it is missing. An
// existing one that group or others may enter, read or write is tightened
// to owner-only and a warning says so; one that cannot be tightened (owned
// by another user, a read-only mount) is refused: it holds the local JWT
// secret, the VAPID private key, the store and the admin socket.
func prepareDataDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return &config.KeyError{Key: "data_dir", Err: err}
	}
	st, err := os.Stat(dir)
	if err != nil {
		return &config.KeyError{Key: "data_dir", Err: err}
	}
	if !st.IsDir() {
		return &config.KeyError{Key: "data_dir", Msg: fmt.Sprintf("%s is not a directory", dir)}
	}
	perm := st.Mode().Perm()
	if perm&0o077 == 0 {
		return nil
	}
	tight := perm &^ 0o077
	if err := os.Chmod(dir, tight); err != nil {
		return &config.KeyError{Key: "data_dir", Msg: fmt.Sprintf("%s has mode %v (group or others may use it) and cannot be tightened to %v; "+
			"chmod 700 it as its owner, or name a directory of the service's own", dir, perm, tight), Err: err}
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o077 != 0 {
		return &config.KeyError{Key: "data_dir", Msg: fmt.Sprintf("%s keeps mode %v after chmod %v (a file system without Unix permissions?)",
			dir, st.Mode().Perm(), tight)}
	}
	log.Warn("the data dir was open to group or others: tightened to owner only", "dir", dir, "was", perm.String(), "now", tight.String())
	return nil
}

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
