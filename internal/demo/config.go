package demo

// Config is demo.* in config.yaml: the browser demo at /demo/ and its
// token endpoint, POST /demo/token, which signs a development token for
// any URN it is given.
// It is served in local mode only, on a loopback api.listen, by an
// instance that runs the api and realtime roles with HS256; while it is on,
// the API answers only requests whose Host is a loopback name or one of
// realtime.allowed_hosts, so that a DNS-rebound name cannot reach it.
type Config struct {
	// Enabled serves the demo (also `serve --demo`). Off by default.
	Enabled bool `yaml:"enabled"`
}
