package deploy

import (
	"bufio"
	"os"
	"path"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/config"
)

// The systemd unit and its single-node configuration: the service's checks
// accept what the unit gives it, and the VAPID key is the credential the
// unit loads.
func TestSystemdSingleNode(t *testing.T) {
	f, err := os.Open("systemd/routingservice.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{"JWT_SECRET": secretEnv["JWT_SECRET"]} // from EnvironmentFile
	credentials := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		switch {
		case !ok || strings.HasPrefix(k, "#"):
		case k == "Environment":
			ek, ev, _ := strings.Cut(v, "=")
			env[ek] = strings.ReplaceAll(ev, "%H", "host-1")
		case k == "LoadCredential":
			name, _, _ := strings.Cut(v, ":")
			credentials["/run/credentials/routingservice.service/"+name] = true
		}
	}
	raw, err := os.ReadFile("systemd/single-node.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	if err := config.Parse(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.FromEnv(func(k string) string { return env[k] })
	cfg.FillDefaults()
	if err := cfg.Check(); err != nil {
		t.Fatalf("the unit's configuration is refused:\n%v", err)
	}
	if cfg.RunMode != config.ModeProduction || !cfg.SingleNode || cfg.Bus.Type != "embedded" || cfg.Store.Type != "sqlite" {
		t.Fatalf("not single-node production: %+v", cfg)
	}
	if cfg.DataDir != "/var/lib/routingservice" || path.Base(env["ROUTING_CONFIG"]) != "config.yaml" {
		t.Errorf("data dir %s (want the unit's StateDirectory), config %s", cfg.DataDir, env["ROUTING_CONFIG"])
	}
	if !credentials[cfg.Push.WebPush.VAPIDPrivateKeyFile] {
		t.Errorf("push.webpush.vapid_private_key_file %s is not a LoadCredential of the unit", cfg.Push.WebPush.VAPIDPrivateKeyFile)
	}
}
