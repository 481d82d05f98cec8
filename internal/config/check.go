package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-routing-service/routingservice/internal/ident"
)

// Check reports every invalid key of c at once. The error is an Errors,
// one *KeyError a problem naming its key (callers that use only some keys
// keep those with Errors.Under). It changes nothing: the derived defaults
// must be filled already (see FillDefaults), and an unset one is an error.
//
// Each part checks its own keys (its Check, keys relative to it, put here
// under the part's key); Check itself checks the instance's own keys and
// the rules that span parts.
func (c Config) Check() error {
	var errs Errors
	bad := func(key, msg string) {
		errs = append(errs, &KeyError{Key: key, Msg: msg})
	}
	prod := c.RunMode == ModeProduction
	c.checkInstance(bad)
	c.API.Check(prod, under("api", bad))
	c.Realtime.Check(prod, under("realtime", bad))
	c.Auth.Check(c.JWTSecret, prod, under("auth", bad))
	c.checkEngines(bad)
	c.Pipeline.Check(under("pipeline", bad))
	c.Push.Check(prod, under("push", bad))
	c.Telemetry.Check(under("telemetry", bad))
	c.checkAcross(bad)
	c.checkDemo(bad)
	return errs.Err()
}

// under returns bad with each key put under prefix: "prefix.key", or
// prefix itself for "". A key in capitals is an environment variable
// (DATABASE_URL) and is left as it is.
func under(prefix string, bad func(key, msg string)) func(key, msg string) {
	return func(key, msg string) {
		switch {
		case key == "":
			key = prefix
		case key != strings.ToUpper(key):
			key = prefix + "." + key
		}
		bad(key, msg)
	}
}

// checkInstance checks the instance's own keys: its mode, roles, id, data
// dir, logs and operations listener.
func (c Config) checkInstance(bad func(key, msg string)) {
	prod := c.RunMode == ModeProduction
	if c.RunMode != ModeLocal && !prod {
		bad("run_mode", fmt.Sprintf("must be %q or %q, got %q", ModeLocal, ModeProduction, c.RunMode))
	}
	if len(c.Roles) == 0 {
		bad("roles", "must name at least one of api, pipeline, realtime")
	}
	for _, r := range c.Roles {
		if r != RoleAPI && r != RolePipeline && r != RoleRealtime {
			bad("roles", fmt.Sprintf("unknown role %q (api, pipeline, realtime)", r))
		}
	}
	if !ident.Valid(c.InstanceID) {
		bad("instance_id", fmt.Sprintf("must be %s, got %q", ident.Rule, c.InstanceID))
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown_timeout", "must be positive")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", fmt.Sprintf("must be debug, info, warn or error, got %q", c.Log.Level))
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", fmt.Sprintf("must be text or json, got %q", c.Log.Format))
	}
	if c.Ops.Listen == "" {
		bad("ops.listen", "must not be empty (it serves /healthz, /readyz and /metrics)")
	}
	if c.Ops.Pprof && prod && !LoopbackListen(c.Ops.Listen) {
		bad("ops.pprof", fmt.Sprintf("needs a loopback ops.listen in production, got %q", c.Ops.Listen))
	}
	if c.Ops.CheckTimeout <= 0 || c.Ops.CheckTimeout > 30*time.Second {
		bad("ops.check_timeout", "must be between 0 and 30s")
	}
}

// checkAcross checks the rules between parts.
func (c Config) checkAcross(bad func(key, msg string)) {
	// A sender's byte quota holds at least one message.
	if c.Store.MaxPendingBytesPerSender < int64(c.API.MaxPayloadBytes) {
		bad("store.max_pending_bytes_per_sender", fmt.Sprintf("must be at least api.max_payload_bytes (%d), or no message of that size could be sent", c.API.MaxPayloadBytes))
	}
	// A connection's send buffer holds the frame of the largest message
	// being written and one more queued behind it.
	if minBuf := 2 * (4*((int64(c.API.MaxPayloadBytes)+2)/3) + 2048); c.Realtime.SendBufferBytes < minBuf {
		bad("realtime.send_buffer_bytes", fmt.Sprintf("must be at least %d (two frames of a message of api.max_payload_bytes)", minBuf))
	}
	if c.Realtime.Listen == "" && c.Has(RoleRealtime) && !c.Has(RoleAPI) {
		bad("realtime.listen", "empty serves WebSockets on the API listener, which needs the api role in this instance")
	}
}

// checkDemo refuses the demo where its token endpoint, which signs in as
// anyone, could be reached by anyone but the machine's own users, or where
// it cannot work.
func (c Config) checkDemo(bad func(key, msg string)) {
	if !c.Demo.Enabled {
		return
	}
	if c.RunMode == ModeProduction {
		bad("demo.enabled", "is refused in production: /demo/token signs a token for any user who asks")
	}
	if !c.Has(RoleAPI) || !c.Has(RoleRealtime) {
		bad("demo.enabled", fmt.Sprintf("needs the api and realtime roles in this instance, got %v", c.Roles))
	}
	if !slices.Contains(c.Auth.Algorithms, "HS256") {
		bad("demo.enabled", "needs HS256 in auth.algorithms (the demo signs HS256 development tokens)")
	}
	if c.Has(RoleAPI) && !LoopbackListen(c.API.Listen) {
		bad("api.listen", "must be a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT) while demo.enabled is true, "+
			fmt.Sprintf("since /demo/token signs a token for anyone who reaches it; got %q", c.API.Listen))
	}
	if slices.Contains(c.Realtime.AllowedHosts, "*") {
		bad("realtime.allowed_hosts", "wildcard \"*\" is refused while demo.enabled is true (any DNS-rebound name could reach /demo/token)")
	}
}
