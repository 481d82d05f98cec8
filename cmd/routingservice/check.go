package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/config"
)

// errConfigInvalid is config check's error once it has printed the
// problems: the command fails without printing them a second time.
var errConfigInvalid = errors.New("the configuration is not valid (the problems are above)")

// configCheckUsage is the synopsis of `config check`.
const configCheckUsage = "config check [--config PATH] [--connect [--timeout 5s]]"

// configCheck runs every check `serve` runs before it opens anything (the
// keys, the environment, the files the configuration names), all of them in
// one pass, and prints which file it read, then every problem (one a line,
// once), or the effective configuration with its YAML key names, the keys
// the chosen engines do not use (bus.ingress_topic on NATS, which names
// its streams from bus.nats.subject_prefix), and whether each secret is
// set (never its value). With --connect it then reaches each backend the
// roles use, changing nothing, and prints one line per backend: "ok   "
// or "FAIL " and the backend's name; any FAIL makes it fail.
func configCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config check", configCheckUsage, stderr)
	connect := fs.Bool("connect", false, "after the static checks, reach every backend the roles use (bus, store, presence, JWKS) without changing anything")
	timeout := fs.Duration("timeout", 5*time.Second, "with --connect, how long each backend may take to answer")
	pathFlag := fs.String("config", "", "config file (default $ROUTING_CONFIG, else ./config.yaml when present)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *timeout <= 0 {
		return errors.New("config check: --timeout must be positive")
	}
	path := configPath(*pathFlag)
	if path == "" {
		fmt.Fprintln(stdout, "config file: none (the defaults and the environment)")
	} else {
		abs, err := filepath.Abs(path)
		if err != nil {
			abs = path
		}
		fmt.Fprintf(stdout, "config file: %s\n", abs)
	}
	cfg, err := config.LoadUnchecked(path)
	if err != nil {
		return err
	}
	// Every problem in one pass: the keys and the environment, then the
	// files they name.
	var problems config.Errors
	for _, err := range []error{cfg.Check(), app.Preflight(cfg)} {
		var es config.Errors
		switch {
		case err == nil:
		case errors.As(err, &es):
			problems = append(problems, es...)
		default:
			problems = append(problems, &config.KeyError{Key: "config", Err: err})
		}
	}
	if len(problems) > 0 {
		fmt.Fprintf(stdout, "%d problems:\n%s\n", len(problems), problems.Error())
		return errConfigInvalid
	}
	b, err := yaml.Marshal(cfg) // secrets have no YAML key
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "configuration is valid\n\n%s\n", b)
	if unused := cfg.Unused(); len(unused) > 0 {
		fmt.Fprintf(stdout, "# not used with bus.type %s: %s\n", cfg.Bus.Type, strings.Join(unused, ", "))
	}
	fmt.Fprintln(stdout, "# from the environment:")
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
