package main

import (
	"fmt"
	"io"

	"go.yaml.in/yaml/v3"

	"github.com/go-routing-service/routingservice/internal/app"
)

// configCheck runs every check `serve` runs before it opens anything (the
// keys, the environment, the files the configuration names) and prints the
// effective configuration with its YAML key names, and whether each secret
// is set (never its value).
func configCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config check", "config check [--config PATH]", stderr)
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
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
	return nil
}
