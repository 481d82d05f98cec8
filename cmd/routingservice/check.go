package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/go-routing-service/routingservice/internal/app"
)

// configCheckUsage is the synopsis of `config check`.
const configCheckUsage = "config check [--config PATH] [--connect [--timeout 5s]]"

// configCheck runs every check `serve` runs before it opens anything (the
// keys, the environment, the files the configuration names) and prints the
// effective configuration with its YAML key names, and whether each secret
// is set (never its value). With --connect it then reaches each backend the
// roles use, changing nothing, and prints one line per backend: "ok   " or
// "FAIL " and the backend's name; any FAIL makes it fail.
func configCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config check", configCheckUsage, stderr)
	connect := fs.Bool("connect", false, "after the static checks, reach every backend the roles use (bus, store, presence, JWKS) without changing anything")
	timeout := fs.Duration("timeout", 5*time.Second, "with --connect, how long each backend may take to answer")
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	if *timeout <= 0 {
		return errors.New("config check: --timeout must be positive")
	}
	if err := app.Preflight(cfg); err != nil {
		return err
	}
	b, err := yaml.Marshal(cfg) // secrets have no YAML key
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "configuration is valid\n\n%s\n# from the environment:\n", b)
	secrets := []struct {
		name string
		set  bool
	}{
		{"JWT_SECRET", cfg.JWTSecret != "" && !cfg.LocalSecret},
		{"DATABASE_URL", cfg.DatabaseURL != ""},
		{"REDIS_PASSWORD", cfg.RedisPassword != ""},
	}
	for _, s := range secrets {
		v := "<unset>"
		if s.set {
			v = "<set>"
		}
		fmt.Fprintf(stdout, "# %s: %s\n", s.name, v)
	}
	if cfg.LocalSecret {
		fmt.Fprintln(stdout, "# tokens are signed with the secret generated into the data dir (local mode, JWT_SECRET unset)")
	}
	if !*connect {
		return nil
	}
	fmt.Fprintf(stdout, "\nbackends (each within %v, nothing changed):\n", *timeout)
	checks := app.CheckBackends(context.Background(), cfg, *timeout)
	failed := 0
	for _, c := range checks {
		if c.Err != nil {
			failed++
			fmt.Fprintf(stdout, "FAIL %s: %v\n", c.Backend, oneLine(c.Err.Error()))
			continue
		}
		fmt.Fprintf(stdout, "ok   %s: %s\n", c.Backend, c.Detail)
	}
	if failed > 0 {
		return fmt.Errorf("config check --connect: %d of %d backends failed", failed, len(checks))
	}
	return nil
}

// oneLine keeps a backend's error on its line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}
