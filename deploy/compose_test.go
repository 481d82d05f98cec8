package deploy

import (
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/go-routing-service/routingservice/internal/config"
)

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Environment map[string]string `yaml:"environment"`
		Configs     []struct {
			Source string `yaml:"source"`
			Target string `yaml:"target"`
		} `yaml:"configs"`
		Secrets  []string `yaml:"secrets"`
		Volumes  []string `yaml:"volumes"`
		Networks map[string]struct {
			Aliases []string `yaml:"aliases"`
		} `yaml:"networks"`
	} `yaml:"services"`
	Configs map[string]struct {
		File string `yaml:"file"`
	} `yaml:"configs"`
}

// deploy/compose runs three instances of config/nats-postgres-redis.yaml
// without TLS: each instance's configuration passes the service's checks in
// production mode (insecure_links the only allowance, no demo: no instance
// signs a token for a caller), the instances have their own ids and data
// volumes, and every host the configuration names is a service of the
// compose file.
func TestCompose(t *testing.T) {
	b, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(b, &cf); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]bool{}
	for name, s := range cf.Services {
		hosts[name] = true
		for _, n := range s.Networks {
			for _, a := range n.Aliases {
				hosts[a] = true
			}
		}
	}
	ids := map[string]bool{}
	var instances int
	for name, s := range cf.Services {
		if !strings.HasPrefix(name, "routing-") {
			continue
		}
		instances++
		env := imageEnv(t)
		for k, v := range s.Environment {
			if strings.HasPrefix(v, "${JWT_SECRET") {
				v = secretEnv["JWT_SECRET"]
			}
			env[k] = v
		}
		id := env["ROUTING_INSTANCE_ID"]
		if id == "" || ids[id] {
			t.Errorf("%s: ROUTING_INSTANCE_ID %q is not unique", name, id)
		}
		ids[id] = true
		var file string
		for _, c := range s.Configs {
			if c.Target == env["ROUTING_CONFIG"] {
				file = cf.Configs[c.Source].File
			}
		}
		if filepath.Clean(filepath.Join("compose", file)) != filepath.Join("compose", "config.yaml") {
			t.Fatalf("%s: ROUTING_CONFIG is %q, want compose/config.yaml", name, file)
		}
		// The service's own loading, with the container's environment.
		for _, k := range []string{"JWT_SECRET", "DATABASE_URL", "REDIS_PASSWORD", "ROUTING_INSTANCE_ID", "ROUTING_DATA_DIR", "ROUTING_ROLES", "ROUTING_CONFIG"} {
			t.Setenv(k, env[k])
		}
		cfg, err := config.Load(filepath.Join("compose", file))
		if err != nil {
			t.Fatalf("%s: configuration refused:\n%v", name, err)
		}
		if cfg.RunMode != config.ModeProduction || cfg.Demo.Enabled || !cfg.InsecureLinks {
			t.Errorf("%s: run_mode %s, demo.enabled %v, insecure_links %v: want production, no demo, the links allowed without TLS by name",
				name, cfg.RunMode, cfg.Demo.Enabled, cfg.InsecureLinks)
		}
		if _, err := config.Load(filepath.Join("compose", file), func(c *config.Config) { c.Demo.Enabled = true }); err == nil {
			t.Errorf("%s: the configuration accepts the demo", name)
		}
		if !slices.ContainsFunc(s.Volumes, func(v string) bool { return strings.HasSuffix(v, ":"+cfg.DataDir) }) {
			t.Errorf("%s: data_dir %s is not a volume", name, cfg.DataDir)
		}
		if f := cfg.Push.WebPush.VAPIDPrivateKeyFile; !slices.Contains(s.Secrets, filepath.Base(f)) || filepath.Dir(f) != "/run/secrets" {
			t.Errorf("%s: %s is not a compose secret", name, f)
		}
		for _, u := range strings.Split(cfg.Bus.NATS.URL, ",") {
			pu, err := url.Parse(u)
			if err != nil || !hosts[pu.Hostname()] {
				t.Errorf("%s: bus.nats.url host %q is not a compose service", name, u)
			}
		}
		if h, _, _ := strings.Cut(cfg.Presence.Redis.Addr, ":"); !hosts[h] {
			t.Errorf("%s: presence.redis.addr %q is not a compose service", name, cfg.Presence.Redis.Addr)
		}
		if pu, err := url.Parse(cfg.DatabaseURL); err != nil || !hosts[pu.Hostname()] {
			t.Errorf("%s: DATABASE_URL host is not a compose service", name)
		}
	}
	checkComposeConfigFollowsExample(t)
	if instances != 3 {
		t.Fatalf("%d instances, want 3", instances)
	}
}

// checkComposeConfigFollowsExample: compose/config.yaml is
// config/nats-postgres-redis.yaml but for the keys of its TLS-less links
// and the one that allows them.
func checkComposeConfigFollowsExample(t *testing.T) {
	t.Helper()
	read := func(p string) map[string]any {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	example, compose := read("../config/nats-postgres-redis.yaml"), read("compose/config.yaml")
	allowed := map[string]bool{"insecure_links": true, "bus.nats.url": true, "bus.nats.credentials_file": true, "presence.redis.tls": true}
	var diff func(prefix string, a, b map[string]any)
	diff = func(prefix string, a, b map[string]any) {
		keys := map[string]bool{}
		for k := range a {
			keys[k] = true
		}
		for k := range b {
			keys[k] = true
		}
		for k := range keys {
			am, aok := a[k].(map[string]any)
			bm, bok := b[k].(map[string]any)
			if aok && bok {
				diff(prefix+k+".", am, bm)
				continue
			}
			if !reflect.DeepEqual(a[k], b[k]) && !allowed[prefix+k] {
				t.Errorf("compose/config.yaml %s%s = %v, config/nats-postgres-redis.yaml has %v", prefix, k, b[k], a[k])
			}
		}
	}
	diff("", example, compose)
}
