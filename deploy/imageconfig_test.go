package deploy

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/config"
)

// imageConfigFile is the file of this repository that the image's runtime
// stage copies to $ROUTING_CONFIG, the configuration its `serve` runs.
func imageConfigFile(t *testing.T) string {
	t.Helper()
	target := imageEnv(t)["ROUTING_CONFIG"]
	if target == "" {
		t.Fatal("the image sets no ROUTING_CONFIG: it would run the built-in local defaults")
	}
	stages := parseDockerfile(t, filepath.Join(repoRoot, "Dockerfile"))
	for _, in := range stages[len(stages)-1].instrs {
		if in.cmd != "COPY" {
			continue
		}
		f := strings.Fields(in.args)
		if len(f) == 2 && f[1] == target { // from the build context, no --from or --chown
			return filepath.Join(repoRoot, f[0])
		}
	}
	t.Fatalf("the runtime stage copies no file of the build context to ROUTING_CONFIG %s", target)
	return ""
}

// The image's own configuration is production mode on the embedded
// engines: it passes `config check` (the configuration's checks and the
// files it names) with nothing but JWT_SECRET, refuses to start without
// it, and serves no demo, so the image never signs a token for a caller.
func TestImageConfig(t *testing.T) {
	path := imageConfigFile(t)
	for k, v := range imageEnv(t) {
		t.Setenv(k, v)
	}
	for _, k := range []string{"DATABASE_URL", "REDIS_PASSWORD", "ROUTING_INSTANCE_ID", "ROUTING_ROLES"} {
		t.Setenv(k, "")
	}
	t.Setenv("JWT_SECRET", secretEnv["JWT_SECRET"])
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("%s is refused:\n%v", path, err)
	}
	if err := app.Preflight(cfg); err != nil {
		t.Fatalf("%s: the files it names:\n%v", path, err)
	}
	if cfg.RunMode != config.ModeProduction || !cfg.SingleNode || cfg.Demo.Enabled || cfg.InsecureLinks {
		t.Fatalf("the image runs run_mode %s, single_node %v, demo.enabled %v, insecure_links %v; want production on one node, no demo",
			cfg.RunMode, cfg.SingleNode, cfg.Demo.Enabled, cfg.InsecureLinks)
	}
	if cfg.DataDir != imageEnv(t)["ROUTING_DATA_DIR"] || cfg.Store.SQLite.Path != filepath.Join(cfg.DataDir, "routing.db") {
		t.Errorf("data_dir %s, store %s: want both on the image's volume", cfg.DataDir, cfg.Store.SQLite.Path)
	}
	// `serve --demo` on it is refused too.
	if _, err := config.Load(path, func(c *config.Config) { c.Demo.Enabled = true }); err == nil || !strings.Contains(err.Error(), "config key demo.enabled:") {
		t.Errorf("the image's configuration with the demo: %v, want a refusal naming demo.enabled", err)
	}
	t.Setenv("JWT_SECRET", "")
	if _, err := config.Load(path); err == nil || !strings.Contains(err.Error(), "JWT_SECRET") {
		t.Errorf("the image's configuration without JWT_SECRET: %v, want a refusal naming JWT_SECRET", err)
	}
}
