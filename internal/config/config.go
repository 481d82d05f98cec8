// Package config turns config.yaml and the environment into a validated
// Config. Every key has a default: with no file at all the service runs on
// the embedded default (embedded NATS, SQLite, in-process presence).
//
// Each part of the service owns its keys: their type, their defaults and
// their checks live in the part's package (api.Config, realtime.Config,
// auth.Config, bus.Config, store.Config, presence.Config, route.Config
// for pipeline.*, push.Config, telemetry.Config, demo.Config), and each
// engine owns its section (natsbus.Settings for bus.nats.*, ...; see
// engines.go). Config embeds them under their YAML keys; Check puts each
// part's problems under its key and checks what spans parts (roles and
// listeners, the payload size against the buffers and quotas, the demo,
// production's engines and links).
//
// Secrets never come from the file: JWT_SECRET, DATABASE_URL, REDIS_PASSWORD
// and credentials files named by path are read from the environment. In
// local mode without JWT_SECRET, the HS256 secret is a random one generated
// into the data dir on first start (see LoadLocalSecret).
package config

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/go-routing-service/routingservice/internal/api"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/demo"
	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/realtime"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// Run modes.
const (
	ModeLocal      = "local"
	ModeProduction = "production"
)

// Roles an instance can run.
const (
	RoleAPI      = "api"
	RolePipeline = "pipeline"
	RoleRealtime = "realtime"
)

// LocalSecretFile is the file under the data dir holding the HS256 secret
// generated in local mode when JWT_SECRET is unset.
const LocalSecretFile = "jwt_secret"

// Config is the whole configuration.
type Config struct {
	RunMode string `yaml:"run_mode"`
	// SingleNode allows the embedded engines (NATS in process, SQLite,
	// in-process presence) in production mode, for a deployment of one
	// instance on one machine; every other production check stays.
	SingleNode bool `yaml:"single_node"`
	// InsecureLinks lets production mode accept links to NATS, Redis and
	// PostgreSQL without TLS or credentials, for a private network that
	// only the instances and the engines reach (a compose network); the
	// log warns at start. Every other production check holds.
	InsecureLinks   bool          `yaml:"insecure_links"`
	InstanceID      string        `yaml:"instance_id"`
	Roles           []string      `yaml:"roles"`
	DataDir         string        `yaml:"data_dir"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`

	Log       Log              `yaml:"log"`
	API       api.Config       `yaml:"api"`
	Realtime  realtime.Config  `yaml:"realtime"`
	Auth      auth.Config      `yaml:"auth"`
	Bus       Bus              `yaml:"bus"`
	Store     Store            `yaml:"store"`
	Presence  Presence         `yaml:"presence"`
	Pipeline  route.Config     `yaml:"pipeline"`
	Push      push.Config      `yaml:"push"`
	Telemetry telemetry.Config `yaml:"telemetry"`
	Admin     Admin            `yaml:"admin"`
	Ops       Ops              `yaml:"ops"`
	Demo      demo.Config      `yaml:"demo"`

	// From the environment, never from the file.
	JWTSecret     string `yaml:"-"`
	DatabaseURL   string `yaml:"-"`
	RedisPassword string `yaml:"-"`
	// LocalSecret is true when JWTSecret is the secret generated into the
	// data dir (local mode without JWT_SECRET; see LoadLocalSecret).
	LocalSecret bool `yaml:"-"`
}

// Ops configures the operations listener: /healthz, /readyz and /metrics,
// served without a token and never on the API or WebSocket port.
type Ops struct {
	// Listen is the listener's address; keep it off the public network
	// (loopback by default, the pod network for probes and scraping).
	Listen string `yaml:"listen"`
	// CheckTimeout bounds each backend check of /readyz.
	CheckTimeout time.Duration `yaml:"check_timeout"`
	// Pprof serves Go's runtime profiles (CPU, heap, goroutines, execution
	// trace) under /debug/pprof/ on this listener. Off by default; in
	// production only on a loopback listen address, since a profile names
	// the code's internals and a CPU profile or trace costs CPU while it runs.
	Pprof bool `yaml:"pprof"`
}

// Log configures structured logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// Admin configures the admin endpoint: an HTTP server on a Unix domain
// socket (file mode 0600) through which `routingservice dlq` inspects,
// replays and purges the dead-letter queues of the running service.
type Admin struct {
	// Socket is the socket's path: "" means <data_dir>/admin.sock, "-"
	// disables the admin endpoint.
	Socket string `yaml:"socket"`
}

// AdminSocket is the admin socket's path ("" when disabled).
func (c *Config) AdminSocket() string {
	switch c.Admin.Socket {
	case "-":
		return ""
	case "":
		return filepath.Join(c.DataDir, "admin.sock")
	}
	return c.Admin.Socket
}

// Default returns the embedded-default configuration.
func Default() Config {
	return Config{
		RunMode:         ModeLocal,
		Roles:           []string{RoleAPI, RolePipeline, RoleRealtime},
		DataDir:         "./data", // from the config file's directory; without a file, UserDataDir
		ShutdownTimeout: 15 * time.Second,
		Log:             Log{Level: "info", Format: "text"},
		API:             api.DefaultConfig(),
		Realtime:        realtime.DefaultConfig(),
		Auth:            auth.DefaultConfig(),
		Bus:             defaultBus(),
		Store:           defaultStore(),
		Presence:        defaultPresence(),
		Pipeline:        route.DefaultConfig(),
		Push:            push.DefaultConfig(),
		Telemetry:       telemetry.DefaultConfig(),
		Ops:             Ops{Listen: "127.0.0.1:9090", CheckTimeout: time.Second},
	}
}

// Load reads the file at path ("" for none) over the defaults, applies the
// environment and then each override (a command's flags), fills the
// derived defaults and validates the result.
func Load(path string, overrides ...func(*Config)) (Config, error) {
	cfg, err := LoadUnchecked(path, overrides...)
	if err != nil {
		return Config{}, err
	}
	if err := cfg.Check(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// LoadUnchecked is Load without Check: the configuration as read, with its
// derived defaults, for a caller that reports every problem at once (the
// key checks, and its own checks of the files it names). It fails only
// when the file cannot be read or parsed, or the local secret made.
func LoadUnchecked(path string, overrides ...func(*Config)) (Config, error) {
	cfg := Default()
	if err := cfg.ReadFile(path); err != nil {
		return Config{}, err
	}
	cfg.FromEnv(os.Getenv)
	for _, o := range overrides {
		o(&cfg)
	}
	cfg.FillDefaults()
	if err := cfg.LoadLocalSecret(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Parse decodes YAML over cfg. Unknown keys are errors.
func Parse(b []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, errEOF()) {
		return err
	}
	return nil
}

func errEOF() error { return io.EOF }

// FromEnv reads the secrets from the environment, and the overrides of
// instance_id (ROUTING_INSTANCE_ID), data_dir (ROUTING_DATA_DIR) and roles
// (ROUTING_ROLES, comma-separated) when they are set.
func (c *Config) FromEnv(getenv func(string) string) {
	c.JWTSecret = getenv("JWT_SECRET")
	c.DatabaseURL = getenv("DATABASE_URL")
	c.RedisPassword = getenv("REDIS_PASSWORD")
	if v := getenv("ROUTING_INSTANCE_ID"); v != "" {
		c.InstanceID = v
	}
	if v := getenv("ROUTING_DATA_DIR"); v != "" {
		c.DataDir = v
	}
	if v := getenv("ROUTING_ROLES"); v != "" {
		c.Roles = splitList(v)
	}
}

// splitList splits a comma-separated list, trimming blanks and dropping
// empty entries.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Has reports whether the instance runs role.
func (c *Config) Has(role string) bool { return slices.Contains(c.Roles, role) }

// FillDefaults fills the defaults that derive from other keys or from the
// machine, where they are unset: the instance id (host name and a random
// suffix), the data dir (UserDataDir when no file or variable named one;
// a relative one made absolute) and the SQLite path (under the data dir).
// It leaves set values alone, so calling it again changes nothing. Call
// it after FromEnv and before Check.
func (c *Config) FillDefaults() {
	if c.InstanceID == "" {
		c.InstanceID = defaultInstanceID()
	}
	c.fillDataDir(os.Getenv)
	c.fillStoreDefaults()
	if c.Bus.PackDeliveries == nil {
		pack := c.Bus.Packing()
		c.Bus.PackDeliveries = &pack
	}
}

func defaultInstanceID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := make([]byte, 0, 32)
	for i := 0; i < len(host) && len(name) < 40; i++ {
		c := host[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			name = append(name, c)
		}
	}
	if len(name) == 0 {
		name = append(name, "instance"...)
	}
	return string(name) + "-" + hex.EncodeToString(b[:])
}

// LoopbackListen reports whether addr (host:port) binds a loopback address
// only: "localhost" or a literal loopback IP, not an empty host (every
// interface).
func LoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
