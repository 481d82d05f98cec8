// Command routingservice runs the routing service and its tools.
//
//	routingservice serve [--config config.yaml] [--demo]
//	routingservice token --sub urn:sm:user:alice [--ttl 1h]
//	routingservice config check [--connect]
//	routingservice vapid
//	routingservice dlq list|show|replay|purge ...
//	routingservice version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/version"
)

const usage = `usage: routingservice <command> [flags]

commands:
  serve           run the service (roles from config; all three by default);
                  --demo also serves the browser demo at /demo/ (local mode, loopback only)
  token           print a development token: token --sub urn:sm:user:alice [--ttl 1h] [--allow-production]
  config check    run every check serve runs before it starts and print the configuration;
                  --connect also reaches each backend (bus, store, presence, JWKS), changing nothing
  vapid           print a new VAPID key pair for Web Push
  dlq             inspect and replay dead-lettered messages: dlq list|show|replay|purge
  version         print the version, commit and Go version (also --version)

Every command takes --config PATH (default: $ROUTING_CONFIG, else ./config.yaml when present).
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "routingservice:", err)
		os.Exit(1)
	}
}

// run runs one command; -h prints the command's flags and returns nil.
func run(args []string, stdout, stderr io.Writer) error {
	err := command(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// newFlags returns a command's flag set; its usage is the synopsis and the
// command's own flags.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: routingservice %s\n", synopsis)
		if hasFlags(fs) {
			fmt.Fprintln(stderr, "\nflags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

func command(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "token":
		return token(args[1:], stdout, stderr)
	case "config":
		if len(args) == 2 && (args[1] == "-h" || args[1] == "--help" || args[1] == "help") {
			fmt.Fprintln(stderr, "usage: routingservice "+configCheckUsage)
			return nil
		}
		if len(args) < 2 || args[1] != "check" {
			return errors.New("usage: routingservice " + configCheckUsage)
		}
		return configCheck(args[2:], stdout, stderr)
	case "vapid":
		return vapid(args[1:], stdout, stderr)
	case "dlq":
		return dlq(args[1:], stdout, stderr)
	case "version", "--version":
		return printVersion(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// configPath picks the config file: the flag, $ROUTING_CONFIG, or ./config.yaml when present.
func configPath(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := os.Getenv("ROUTING_CONFIG"); v != "" {
		return v
	}
	if _, err := os.Stat("config.yaml"); err == nil {
		return "config.yaml"
	}
	return ""
}

// loadConfig parses the command's flags and loads the configuration; each
// override (the command's flags that set keys) applies after the file and
// the environment, before the checks.
func loadConfig(fs *flag.FlagSet, args []string, overrides ...func(*config.Config)) (config.Config, error) {
	path := fs.String("config", "", "config file (default $ROUTING_CONFIG, else ./config.yaml when present)")
	if err := fs.Parse(args); err != nil {
		return config.Config{}, err
	}
	return config.Load(configPath(*path), overrides...)
}

// loadToolConfig is loadConfig for a command that uses only a few keys: the
// file must parse, but of the checks only those of the named keys (and the
// keys under them) apply, so that a tool does not ask for backend settings,
// such as DATABASE_URL, that it never uses.
func loadToolConfig(fs *flag.FlagSet, args []string, keys ...string) (config.Config, error) {
	path := fs.String("config", "", "config file (default $ROUTING_CONFIG, else ./config.yaml when present)")
	if err := fs.Parse(args); err != nil {
		return config.Config{}, err
	}
	cfg := config.Default()
	if err := cfg.ReadFile(configPath(*path)); err != nil {
		return config.Config{}, err
	}
	cfg.FromEnv(os.Getenv)
	cfg.FillDefaults()
	if err := cfg.LoadLocalSecret(); err != nil {
		return config.Config{}, err
	}
	var problems config.Errors
	if err := cfg.Check(); err != nil && !errors.As(err, &problems) {
		return config.Config{}, err
	}
	return cfg, problems.Under(keys...).Err()
}

// serveConfig parses serve's flags and loads the configuration it runs.
func serveConfig(args []string, stderr io.Writer) (config.Config, error) {
	fs := newFlags("serve", "serve [--config PATH] [--demo]", stderr)
	demoFlag := fs.Bool("demo", false, "serve the browser demo at /demo/ and its token endpoint, which signs a token for any user "+
		"(sets demo.enabled; local mode with a loopback api.listen only)")
	return loadConfig(fs, args, func(c *config.Config) {
		if *demoFlag {
			c.Demo.Enabled = true
		}
	})
}

func serve(args []string, stderr io.Writer) error {
	cfg, err := serveConfig(args, stderr)
	if err != nil {
		return err
	}
	log := telemetry.NewLogger(cfg.Log.Level, cfg.Log.Format)
	// Parts that log without an instance logger of their own (the token
	// verifier's hints, the key set refresh) write through the same one.
	slog.SetDefault(log)
	v := version.Get()
	log.Info("routingservice", "version", v.Version, "commit", v.Commit, "go", v.GoVersion)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		stop() // a second signal kills the process at once
	}()
	return a.Run(ctx)
}

func token(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("token", "token --sub URN [--ttl 1h] [--allow-production] [--config PATH]", stderr)
	sub := fs.String("sub", "", "the caller's URN (the token's sub), e.g. urn:sm:user:alice")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	allowProd := fs.Bool("allow-production", false, "in production mode, sign with JWT_SECRET anyway (smoke tests)")
	cfg, err := loadToolConfig(fs, args, "run_mode", "data_dir", "auth", "JWT_SECRET")
	if err != nil {
		return err
	}
	if cfg.RunMode == config.ModeProduction {
		if !*allowProd {
			return errors.New("token is a development aid and refuses to run in production mode (run_mode: production); --allow-production signs with JWT_SECRET for a smoke test")
		}
		fmt.Fprintln(stderr, "routingservice: warning: signing a token with the production JWT_SECRET (--allow-production); anyone holding it can act as", *sub)
	}
	if err := envelope.ValidateURN(*sub); err != nil {
		return fmt.Errorf("--sub: %w", err)
	}
	if *ttl <= 0 || *ttl > 30*24*time.Hour {
		return errors.New("--ttl must be between 1s and 720h")
	}
	if cfg.JWTSecret == "" {
		return errors.New("token signs with JWT_SECRET, which is unset")
	}
	tok, err := auth.Sign([]byte(cfg.JWTSecret), *sub, *ttl, time.Now())
	if err != nil {
		return err
	}
	if cfg.LocalSecret {
		fmt.Fprintf(stderr, "routingservice: signed with the secret in %s (JWT_SECRET is unset)\n", filepath.Join(cfg.DataDir, config.LocalSecretFile))
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
