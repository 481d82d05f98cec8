// Command routingservice runs the routing service and its tools.
//
//	routingservice serve [--config config.yaml]
//	routingservice token --sub urn:sm:user:alice [--ttl 1h]
//	routingservice config check
//	routingservice vapid
//	routingservice dlq list|show|replay|purge ...
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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
)

const usage = `usage: routingservice <command> [flags]

commands:
  serve           run the service (roles from config; all three by default)
  token           print a development token: token --sub urn:sm:user:alice [--ttl 1h]
  config check    validate the configuration and print it (secrets elided)
  vapid           print a new VAPID key pair for Web Push
  dlq             inspect and replay dead-lettered messages: dlq list|show|replay|purge

Every command takes --config PATH (default: $ROUTING_CONFIG, else ./config.yaml when present).
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "routingservice:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "token":
		return token(args[1:], stdout)
	case "config":
		if len(args) < 2 || args[1] != "check" {
			return errors.New("usage: routingservice config check [--config PATH]")
		}
		return configCheck(args[2:], stdout)
	case "vapid":
		return vapid(args[1:], stdout)
	case "dlq":
		return dlq(args[1:], stdout, stderr)
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

func loadConfig(fs *flag.FlagSet, args []string) (config.Config, error) {
	path := fs.String("config", "", "config file")
	if err := fs.Parse(args); err != nil {
		return config.Config{}, err
	}
	return config.Load(configPath(*path))
}

func serve(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	log := telemetry.NewLogger(cfg.Log.Level, cfg.Log.Format)
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

func token(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	sub := fs.String("sub", "", "the caller's URN (the token's sub), e.g. urn:sm:user:alice")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	if cfg.RunMode == config.ModeProduction {
		return errors.New("token is a development aid and refuses to run in production mode (run_mode: production)")
	}
	if err := envelope.ValidateURN(*sub); err != nil {
		return fmt.Errorf("--sub: %w", err)
	}
	if *ttl <= 0 || *ttl > 30*24*time.Hour {
		return errors.New("--ttl must be between 1s and 720h")
	}
	tok, err := auth.Sign([]byte(cfg.JWTSecret), *sub, *ttl, time.Now())
	if err != nil {
		return err
	}
	if cfg.LocalSecret {
		fmt.Fprintf(os.Stderr, "routingservice: signed with the secret in %s (JWT_SECRET is unset)\n", filepath.Join(cfg.DataDir, config.LocalSecretFile))
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func configCheck(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	redacted := cfg
	redacted.JWTSecret, redacted.DatabaseURL, redacted.RedisPassword = "", "", ""
	b, _ := json.MarshalIndent(redacted, "", "  ")
	fmt.Fprintf(stdout, "configuration is valid\n%s\n", b)
	return nil
}
