package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/push/pushtest"
	"github.com/go-routing-service/routingservice/internal/push/webpush"
)

// `config check` refuses every file `serve` would refuse, naming the keys,
// all at once; serve refuses them before it creates anything (the data dir
// stays absent); and a configuration the check accepts is one serve starts
// with.
func TestConfigCheckAgreesWithServe(t *testing.T) {
	t.Setenv("ROUTING_CONFIG", "")
	// With JWT_SECRET set, loading the configuration creates nothing
	// (local mode without it generates a secret into the data dir).
	t.Setenv("JWT_SECRET", "check-test-secret-0123456789-0123456789")
	t.Setenv("ROUTING_DATA_DIR", "")
	files := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(files, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pub, priv, err := webpush.GenerateVAPIDKeys()
	if err != nil {
		t.Fatal(err)
	}
	otherPub, _, err := webpush.GenerateVAPIDKeys()
	if err != nil {
		t.Fatal(err)
	}
	vapid := write("vapid", priv+"\n")
	vapidJSON := write("vapid.json", `{"public_key":"`+pub+`","private_key":"`+priv+`"}`)
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	srv.Close()
	ca := write("ca.pem", string(pushtest.PEM(srv.Certificate())))
	notPEM := write("not.pem", "certificate\n")
	missing := filepath.Join(files, "missing")
	badCreds := write("user.creds", "not a creds file\n")

	cases := []struct {
		name string
		yaml string
		keys []string // empty: accepted
	}{
		{"vapid key file", "push: {webpush: {vapid_private_key_file: %q}, ca_file: %q}\n", nil},
		{"missing vapid key file", "push: {webpush: {vapid_private_key_file: " + q(missing) + "}}\n", []string{"push.webpush.vapid_private_key_file"}},
		{"vapid.json instead of the key", "push: {webpush: {vapid_private_key_file: " + q(vapidJSON) + "}}\n",
			[]string{"push.webpush.vapid_private_key_file", "43 characters of unpadded base64url"}},
		{"vapid public key of another pair", "push: {webpush: {vapid_private_key_file: " + q(vapid) + ", vapid_public_key: " + otherPub + "}}\n",
			[]string{"push.webpush.vapid_public_key"}},
		{"CA file without PEM", "push: {ca_file: " + q(notPEM) + "}\n", []string{"push.ca_file"}},
		{"missing FCM credentials", "push: {fcm: {enabled: true, project_id: p, credentials_file: " + q(missing) + "}}\n", []string{"push.fcm.credentials_file"}},
		{"APNs key that is not a key", "push: {apns: {enabled: true, key_file: " + q(notPEM) + ", key_id: K, team_id: T, topic: com.example}}\n",
			[]string{"push.apns.key_file"}},
		{"NATS credentials that are not credentials", "bus: {type: nats, nats: {url: 'nats://127.0.0.1:1', credentials_file: " + q(badCreds) + "}}\n",
			[]string{"bus.nats.credentials_file"}},
		{"every problem at once", "push: {ca_file: " + q(notPEM) + ", webpush: {vapid_private_key_file: " + q(missing) + "}, " +
			"fcm: {enabled: true, project_id: p, credentials_file: " + q(missing) + "}}\n",
			[]string{"push.ca_file", "push.webpush.vapid_private_key_file", "push.fcm.credentials_file"}},
	}
	cases[0].yaml = "push: {webpush: {vapid_private_key_file: " + q(vapid) + ", vapid_public_key: " + pub + "}, ca_file: " + q(ca) + "}\n"

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			path := filepath.Join(t.TempDir(), "config.yaml")
			body := c.yaml + "data_dir: " + q(dataDir) + "\napi: {listen: '127.0.0.1:0'}\nrealtime: {listen: '127.0.0.1:0'}\nadmin: {socket: '-'}\n"
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			checkErr := run([]string{"config", "check", "--config", path}, &out, io.Discard)
			if len(c.keys) == 0 {
				if checkErr != nil {
					t.Fatalf("config check refused a good configuration: %v", checkErr)
				}
				if !strings.Contains(out.String(), "configuration is valid") || !strings.Contains(out.String(), "# JWT_SECRET: <set>") {
					t.Fatalf("config check printed:\n%s", out.String())
				}
				// serve's start: the same load, then the app.
				cfg, err := config.Load(path)
				if err != nil {
					t.Fatal(err)
				}
				a, err := app.New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
				if err != nil {
					t.Fatalf("config check accepted what serve refuses: %v", err)
				}
				a.Close()
				return
			}
			if checkErr == nil {
				t.Fatalf("config check accepted it:\n%s", out.String())
			}
			serveErr := run([]string{"serve", "--config", path}, io.Discard, io.Discard)
			if serveErr == nil {
				t.Fatal("serve accepted it")
			}
			for _, k := range c.keys {
				if !strings.Contains(out.String(), k) {
					t.Errorf("config check does not say %q:\n%s", k, out.String())
				}
				if !strings.Contains(serveErr.Error(), k) {
					t.Errorf("serve error does not say %q:\n%v", k, serveErr)
				}
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("serve left %s behind (%v)", dataDir, err)
			}
		})
	}
}

func q(s string) string { return "'" + s + "'" }

// A production configuration with problems of every kind (missing secrets,
// links, a file that does not exist) gets all of them from one run of
// config check, each printed once, under the name of the file it read.
func TestConfigCheckReportsEverythingInOnePass(t *testing.T) {
	t.Setenv("ROUTING_CONFIG", "")
	t.Setenv("ROUTING_DATA_DIR", "")
	for _, k := range []string{"JWT_SECRET", "DATABASE_URL", "REDIS_PASSWORD"} {
		t.Setenv(k, "")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "production.yaml")
	body := `run_mode: production
store: {type: postgres}
presence: {type: redis}
bus: {type: nats, nats: {url: "nats://127.0.0.1:1"}}
push: {webpush: {enabled: true, vapid_private_key_file: ` + q(filepath.Join(dir, "missing")) + `}}
`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut strings.Builder
	err := run([]string{"config", "check", "--config", path}, &out, &errOut)
	if err == nil {
		t.Fatalf("accepted:\n%s", out.String())
	}
	got := out.String()
	if !strings.Contains(got, "config file: "+path) {
		t.Errorf("does not say which file it read:\n%s", got)
	}
	for _, k := range []string{"store.type", "DATABASE_URL", "sslmode", "auth.algorithms", "JWT_SECRET", "presence.redis.tls",
		"REDIS_PASSWORD", "bus.nats.url", "bus.nats.credentials_file", "push.webpush.vapid_private_key_file"} {
		if !strings.Contains(got, k) {
			t.Errorf("does not say %q in the one pass:\n%s", k, got)
		}
	}
	if n := strings.Count(got, "config key bus.nats.url:"); n != 1 {
		t.Errorf("bus.nats.url printed %d times:\n%s", n, got)
	}
	if strings.Contains(err.Error(), "bus.nats.url") || errOut.Len() > 0 {
		t.Errorf("the problems are repeated: error %q, stderr %q", err, errOut.String())
	}
}

// config check says which keys the chosen bus engine does not use: on
// NATS the Pub/Sub names (bus.ingress_topic and the rest, since NATS
// names its streams from bus.nats.subject_prefix) and the pubsub section;
// on Pub/Sub the nats section, and never a key it uses.
func TestConfigCheckListsTheKeysTheBusEngineIgnores(t *testing.T) {
	t.Setenv("ROUTING_CONFIG", "")
	t.Setenv("ROUTING_DATA_DIR", "")
	t.Setenv("JWT_SECRET", "check-test-secret-0123456789-0123456789")
	for _, tc := range []struct {
		bus          string
		unused, used []string
	}{
		{"{type: nats, nats: {url: 'nats://127.0.0.1:1'}}",
			[]string{"bus.ingress_topic", "bus.ingress_subscription", "bus.delivery_topic", "bus.ingress_dead_letter_topic", "bus.delivery_dead_letter_topic", "bus.pubsub"},
			[]string{"bus.nats", "bus.ack_deadline"}},
		{"{type: embedded}",
			[]string{"bus.ingress_topic", "bus.pubsub", "bus.nats.url", "bus.nats.credentials_file"},
			[]string{"bus.nats.sync", "bus.nats.subject_prefix"}},
		{"{type: pubsub, pubsub: {project_id: p}}",
			[]string{"bus.nats"},
			[]string{"bus.ingress_topic", "bus.delivery_topic", "bus.pubsub"}},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "config.yaml")
		body := "bus: " + tc.bus + "\ndata_dir: " + q(filepath.Join(dir, "data")) + "\npush: {webpush: {enabled: false}}\n"
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		if err := run([]string{"config", "check", "--config", path}, &out, io.Discard); err != nil {
			t.Fatalf("bus %s: %v\n%s", tc.bus, err, out.String())
		}
		var line string
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.HasPrefix(l, "# not used with bus.type ") {
				line = l
			}
		}
		if line == "" {
			t.Fatalf("bus %s: no line of unused keys:\n%s", tc.bus, out.String())
		}
		keys := strings.Split(line[strings.Index(line, ": ")+2:], ", ")
		for _, k := range tc.unused {
			if !slices.Contains(keys, k) {
				t.Errorf("bus %s: %q does not list %s", tc.bus, line, k)
			}
		}
		for _, k := range tc.used {
			if slices.Contains(keys, k) {
				t.Errorf("bus %s: %q lists %s, which the engine uses", tc.bus, line, k)
			}
		}
	}
}
