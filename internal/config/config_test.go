package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/auth"
)

// The shipped config.yaml documents every key with its default.
func TestShippedConfigIsTheDefault(t *testing.T) {
	b, err := os.ReadFile("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var got Config
	if err := Parse(b, &got); err != nil {
		t.Fatal(err)
	}
	if want := Default(); !reflect.DeepEqual(got, want) {
		t.Fatalf("config.yaml differs from Default():\n got %+v\nwant %+v", got, want)
	}
}

func TestDefaultIsValidInLocalMode(t *testing.T) {
	c := Default()
	c.DataDir = t.TempDir()
	c.FillDefaults()
	if err := c.LoadLocalSecret(); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if !c.LocalSecret || len(c.JWTSecret) < 32 {
		t.Fatal("local mode without JWT_SECRET must use a generated secret")
	}
	if c.InstanceID == "" || c.Store.SQLite.Path == "" {
		t.Fatal("derived defaults not filled")
	}
}

// Local mode without JWT_SECRET never falls back to a secret anyone can
// read: each data dir gets its own random secret, in a file only its owner
// reads, kept across restarts.
func TestLocalSecretIsGeneratedPrivateAndKept(t *testing.T) {
	dir := t.TempDir()
	load := func(dir string) Config {
		t.Helper()
		t.Setenv("ROUTING_DATA_DIR", dir)
		t.Setenv("JWT_SECRET", "")
		c, err := Load("")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := load(dir)
	if !c.LocalSecret || len(c.JWTSecret) < 32 || slices.Contains(auth.PublishedSecrets, c.JWTSecret) {
		t.Fatalf("not a generated secret: %q", c.JWTSecret)
	}
	st, err := os.Stat(filepath.Join(dir, LocalSecretFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v, want 0600", st.Mode().Perm())
	}
	if again := load(dir); again.JWTSecret != c.JWTSecret {
		t.Fatal("a second start generated another secret")
	}
	if other := load(t.TempDir()); other.JWTSecret == c.JWTSecret {
		t.Fatal("two data dirs share a secret")
	}
	// A secret file others may read is refused, not used.
	if err := os.Chmod(filepath.Join(dir, LocalSecretFile), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ROUTING_DATA_DIR", dir)
	if _, err := Load(""); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("a world-readable secret file was accepted: %v", err)
	}
}

// The formerly published development secret is refused in every mode.
func TestPublishedSecretIsRefused(t *testing.T) {
	for _, mode := range []string{ModeLocal, ModeProduction} {
		c := Default()
		c.RunMode = mode
		c.JWTSecret = auth.PublishedSecrets[0]
		c.FillDefaults()
		if err := c.Check(); err == nil || !strings.Contains(err.Error(), "config key auth.algorithms: JWT_SECRET is a published secret") {
			t.Fatalf("%s mode accepted the published secret: %v", mode, err)
		}
	}
}

func TestValidateNamesTheKey(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		env  map[string]string
		key  string
	}{
		{"production refuses dev secret", "run_mode: production", nil, "auth.algorithms"},
		{"production refuses embedded bus", "run_mode: production", map[string]string{"JWT_SECRET": strings.Repeat("s", 40)}, "bus.type"},
		{"production refuses wildcard cors", "run_mode: production\napi:\n  cors_allowed_origins: ['*']", nil, "api.cors_allowed_origins"},
		{"production refuses wildcard ws origins", "run_mode: production\nrealtime:\n  allowed_origins: ['*']", nil, "realtime.allowed_origins"},
		{"production refuses sqlite", "run_mode: production", nil, "store.type"},
		{"production refuses memory presence", "run_mode: production", nil, "presence.type"},
		{"bad run mode", "run_mode: staging", nil, "run_mode"},
		{"bad role", "roles: [api, web]", nil, "roles"},
		{"bad bus", "bus:\n  type: kafka", nil, "bus.type"},
		{"nats needs url", "bus:\n  type: nats", nil, "bus.nats.url"},
		{"pubsub needs project", "bus:\n  type: pubsub", nil, "bus.pubsub.project_id"},
		{"postgres needs url", "store:\n  type: postgres", nil, "store.type"},
		{"bad sync", "bus:\n  nats:\n    sync: sometimes", nil, "bus.nats.sync"},
		{"subject prefix longer than NATS names allow", "bus: {type: nats, nats: {url: 'nats://n:4222', subject_prefix: " + strings.Repeat("p", 33) + "}}", nil, "bus.nats.subject_prefix"},
		{"bad postgres schema", "store: {postgres_schema: 'a b'}", nil, "store.postgres_schema"},
		{"bad bus name", "bus: {ingress_topic: 'a.b'}", nil, "bus.ingress_topic"},
		{"heartbeat vs ttl", "presence:\n  heartbeat: 2m", nil, "presence.heartbeat"},
		{"attempts range", "bus:\n  max_delivery_attempts: 1001", nil, "bus.max_delivery_attempts"},
		{"payload over body", "api:\n  max_payload_bytes: 999999", nil, "api.max_payload_bytes"},
		{"jwks needed", "auth:\n  algorithms: [RS256]", nil, "auth.jwks_url"},
		{"bad algorithm", "auth:\n  algorithms: [none]", nil, "auth.algorithms[0]"},
		{"production needs a vapid key", "run_mode: production", nil, "push.webpush.vapid_private_key_file"},
		{"production refuses local push endpoints", "run_mode: production\npush: {webpush: {allow_local_endpoints: true}}", nil, "push.webpush.allow_local_endpoints"},
		{"fcm needs credentials", "push: {fcm: {enabled: true}}", nil, "push.fcm.credentials_file"},
		{"apns needs a key", "push: {apns: {enabled: true}}", nil, "push.apns.key_file"},
		{"apns push type", "push: {apns: {push_type: loud, enabled: true}}", nil, "push.apns.push_type"},
		{"webpush urgency", "push: {webpush: {urgency: asap}}", nil, "push.webpush.urgency"},
		{"negative unacked_after", "push: {unacked_after: -1s}", nil, "push.unacked_after"},
		{"pubsub ack deadline", "bus: {type: pubsub, ack_deadline: 1s, pubsub: {project_id: p}}", nil, "bus.ack_deadline"},
		{"bad instance id", "instance_id: 'a b'", nil, "instance_id"},
		{"bad traces", "telemetry: {traces: zipkin}", nil, "telemetry.traces"},
		{"bad otlp endpoint", "telemetry: {traces: otlp, otlp_endpoint: 'collector:4317'}", nil, "telemetry.otlp_endpoint"},
		{"bad sample ratio", "telemetry: {sample_ratio: 2}", nil, "telemetry.sample_ratio"},
		{"production refuses redis without tls", "run_mode: production\npresence: {type: redis}", map[string]string{"REDIS_PASSWORD": "p"}, "presence.redis.tls"},
		{"production refuses redis without password", "run_mode: production\npresence: {type: redis, redis: {tls: true}}", nil, "REDIS_PASSWORD"},
		{"production refuses postgres without sslmode", "run_mode: production\nstore: {type: postgres}", map[string]string{"DATABASE_URL": "postgres://u:p@db/routing"}, "DATABASE_URL"},
		{"production refuses sslmode prefer", "run_mode: production\nstore: {type: postgres}", map[string]string{"DATABASE_URL": "postgres://u:p@db/routing?sslmode=prefer"}, "DATABASE_URL"},
		{"production refuses sslmode disable (key=value)", "run_mode: production\nstore: {type: postgres}", map[string]string{"DATABASE_URL": "host=db user=u sslmode=disable"}, "DATABASE_URL"},
		{"production refuses nats without tls", "run_mode: production\nbus: {type: nats, nats: {url: 'tls://a:4222,nats://b:4222', credentials_file: /c}}", nil, "bus.nats.url"},
		{"production refuses nats without credentials", "run_mode: production\nbus: {type: nats, nats: {url: 'tls://a:4222'}}", nil, "bus.nats.credentials_file"},
		{"production refuses jwks without issuer", "run_mode: production\nauth: {algorithms: [RS256], jwks_url: 'https://idp/jwks', audience: routing}", nil, "auth.issuer"},
		{"production refuses jwks without audience", "run_mode: production\nauth: {algorithms: [RS256], jwks_url: 'https://idp/jwks', issuer: 'https://idp/'}", nil, "auth.audience"},
		{"production refuses no rate limit", "run_mode: production\napi: {rate_limit: 0}", nil, "api.rate_limit"},
		{"production refuses wildcard ws hosts", "run_mode: production\nrealtime: {allowed_hosts: ['*']}", nil, "realtime.allowed_hosts"},
		{"ws origin needs a scheme", "realtime: {allowed_origins: [chat.example.com]}", nil, "realtime.allowed_origins[0]"},
		{"ws host without port", "realtime: {allowed_hosts: ['chat.example.com:443']}", nil, "realtime.allowed_hosts[0]"},
		{"trusted proxies are networks", "realtime: {trusted_proxies: [10.0.0.0/8, lb]}", nil, "realtime.trusted_proxies[1]"},
		{"negative proxy hops", "realtime: {trusted_proxy_hops: -1}", nil, "realtime.trusted_proxy_hops"},
		{"too many proxy hops", "realtime: {trusted_proxy_hops: 9}", nil, "realtime.trusted_proxy_hops"},
		{"global connection cap", "realtime: {max_conns: 0}", nil, "realtime.max_conns"},
		{"per-ip cap", "realtime: {max_conns_per_ip: -1}", nil, "realtime.max_conns_per_ip"},
		{"delivery handlers", "realtime: {delivery_concurrency: -1}", nil, "realtime.delivery_concurrency"},
		{"connect rate per ip", "realtime: {connect_rate_per_ip: -1}", nil, "realtime.connect_rate_per_ip"},
		{"connect burst per user", "realtime: {connect_burst_per_user: 0}", nil, "realtime.connect_burst_per_user"},
		{"ack burst", "realtime: {ack_burst: 0}", nil, "realtime.ack_burst"},
		{"ws idle timeout", "realtime: {idle_timeout: 0s}", nil, "realtime.idle_timeout"},
		{"ws header timeout", "realtime: {read_header_timeout: 0s}", nil, "realtime.read_header_timeout"},
		{"send buffer under two frames", "realtime: {send_buffer_bytes: 65536}", nil, "realtime.send_buffer_bytes"},
		{"send buffer under two frames of the largest payload", "api: {max_payload_bytes: 1048576, max_body_bytes: 2097152}", nil, "realtime.send_buffer_bytes"},
		{"ops listen", "ops: {listen: ''}", nil, "ops.listen"},
		{"ops check timeout", "ops: {check_timeout: 1m}", nil, "ops.check_timeout"},
		{"page bytes", "api: {max_page_bytes: 0}", nil, "api.max_page_bytes"},
		{"fetches per user", "api: {max_fetches_per_user: 0}", nil, "api.max_fetches_per_user"},
		{"pending per sender", "store: {max_pending_per_sender: 0}", nil, "store.max_pending_per_sender"},
		{"pending bytes per sender under a payload", "store: {max_pending_bytes_per_sender: 1000}", nil, "store.max_pending_bytes_per_sender"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			if err := Parse([]byte(tc.yaml), &c); err != nil {
				t.Fatal(err)
			}
			c.FromEnv(func(k string) string { return tc.env[k] })
			c.FillDefaults()
			err := c.Check()
			if err == nil || !strings.Contains(err.Error(), "config key "+tc.key+":") {
				t.Fatalf("error %v does not name key %s", err, tc.key)
			}
		})
	}
}

func TestUnknownKeyIsAnError(t *testing.T) {
	c := Default()
	if err := Parse([]byte("api:\n  lisen: ':1'\n"), &c); err == nil || !strings.Contains(err.Error(), "lisen") {
		t.Fatalf("unknown key not reported: %v", err)
	}
}

// productionSetup is a complete production configuration, with extra
// YAML appended, filled in as serve fills it.
func productionSetup(t *testing.T, extra string) Config {
	t.Helper()
	c := Default()
	y := `run_mode: production
bus: {type: nats, nats: {url: "tls://10.0.0.1:4222, tls://10.0.0.2:4222", credentials_file: /run/secrets/nats.creds}}
store: {type: postgres}
presence: {type: redis, redis: {tls: true}}
push: {webpush: {vapid_private_key_file: /run/secrets/vapid}}
` + extra
	if err := Parse([]byte(y), &c); err != nil {
		t.Fatal(err)
	}
	c.FromEnv(func(k string) string {
		return map[string]string{"JWT_SECRET": strings.Repeat("k", 48), "DATABASE_URL": "host=db user=routing sslmode=verify-ca",
			"REDIS_PASSWORD": "p"}[k]
	})
	c.FillDefaults()
	return c
}

func TestProductionAcceptsACompleteSetup(t *testing.T) {
	c := productionSetup(t, "")
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestPackDeliveriesDefaultsByEngine(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want bool
	}{
		{"bus: {type: embedded}", true},
		{"bus: {type: nats}", true},
		{"bus: {type: pubsub}", false},
		{"bus: {type: pubsub, pack_deliveries: true}", true},
		{"bus: {type: nats, pack_deliveries: false}", false},
	} {
		c := Default()
		if err := Parse([]byte(tc.yaml), &c); err != nil {
			t.Fatal(err)
		}
		if got := c.Bus.Packing(); got != tc.want {
			t.Errorf("%s: Packing() = %v, want %v", tc.yaml, got, tc.want)
		}
		c.FillDefaults() // the effective value, as config check prints it
		if c.Bus.PackDeliveries == nil || *c.Bus.PackDeliveries != tc.want {
			t.Errorf("%s: after FillDefaults pack_deliveries = %v, want %v", tc.yaml, c.Bus.PackDeliveries, tc.want)
		}
	}
}

func TestProductionPprofOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		listen string
		ok     bool
	}{
		{"127.0.0.1:9090", true},
		{"[::1]:9090", true},
		{"localhost:9090", true},
		{":9090", false},
		{"0.0.0.0:9090", false},
		{"10.0.0.5:9090", false},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			c := productionSetup(t, `ops: {pprof: true, listen: "`+tc.listen+`"}`+"\n")
			err := c.Check()
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "config key ops.pprof:")) {
				t.Fatalf("error %v does not name ops.pprof", err)
			}
		})
	}
}

// config/production.yaml is a complete, valid production setup.
func TestProductionExampleIsValid(t *testing.T) {
	b, err := os.ReadFile("../../config/production.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := Parse(b, &c); err != nil {
		t.Fatal(err)
	}
	c.FromEnv(func(k string) string {
		return map[string]string{"DATABASE_URL": "postgres://routing@db/routing?sslmode=verify-full", "REDIS_PASSWORD": "p",
			"ROUTING_INSTANCE_ID": "pod-1"}[k]
	})
	c.FillDefaults()
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if c.RunMode != ModeProduction || c.Bus.Type != "pubsub" || c.Store.Type != "postgres" || c.Presence.Type != "redis" {
		t.Fatalf("not a scale-out setup: %+v", c)
	}
}

// deepCopy returns a copy of v that shares no slice, map or pointer with it.
func deepCopy[T any](v T) T {
	var out T
	copyValue(reflect.ValueOf(&out).Elem(), reflect.ValueOf(v))
	return out
}

func copyValue(dst, src reflect.Value) {
	switch src.Kind() {
	case reflect.Struct:
		for i := range src.NumField() {
			copyValue(dst.Field(i), src.Field(i))
		}
	case reflect.Slice:
		if src.IsNil() {
			return
		}
		dst.Set(reflect.MakeSlice(src.Type(), src.Len(), src.Len()))
		for i := range src.Len() {
			copyValue(dst.Index(i), src.Index(i))
		}
	case reflect.Map:
		if src.IsNil() {
			return
		}
		dst.Set(reflect.MakeMapWithSize(src.Type(), src.Len()))
		for it := src.MapRange(); it.Next(); {
			v := reflect.New(src.Type().Elem()).Elem()
			copyValue(v, it.Value())
			dst.SetMapIndex(it.Key(), v)
		}
	case reflect.Pointer:
		if src.IsNil() {
			return
		}
		dst.Set(reflect.New(src.Type().Elem()))
		copyValue(dst.Elem(), src.Elem())
	default:
		dst.Set(src)
	}
}

// Check only reads: the derived defaults it finds unset stay unset, and
// nothing else changes either, valid or not.
func TestCheckDoesNotChangeTheConfig(t *testing.T) {
	cases := []struct {
		name  string
		yaml  string
		env   map[string]string
		valid bool
	}{
		{"default with derived defaults unset", "", nil, false},
		{"production with derived defaults unset", "run_mode: production\nroles: [api]", map[string]string{"JWT_SECRET": strings.Repeat("k", 48)}, false},
		{"invalid keys", "run_mode: staging\nbus: {type: kafka}\nauth: {algorithms: [none]}", nil, false},
		{"complete", "instance_id: pod-1\nstore: {sqlite_path: /tmp/x.db}", map[string]string{"JWT_SECRET": strings.Repeat("k", 48)}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			if err := Parse([]byte(tc.yaml), &c); err != nil {
				t.Fatal(err)
			}
			c.FromEnv(func(k string) string { return tc.env[k] })
			before := deepCopy(c)
			err := c.Check()
			if (err == nil) != tc.valid {
				t.Fatalf("Check = %v, want valid=%v", err, tc.valid)
			}
			if !reflect.DeepEqual(c, before) {
				t.Fatalf("Check changed the config:\n got %+v\nwant %+v", c, before)
			}
		})
	}
}

// Check reports a derived default left unset, naming its key.
func TestCheckReportsUnfilledDefaults(t *testing.T) {
	c := Default()
	err := c.Check()
	for _, key := range []string{"instance_id", "store.sqlite_path", "auth.algorithms"} {
		if err == nil || !strings.Contains(err.Error(), "config key "+key+":") {
			t.Errorf("error %v does not name key %s", err, key)
		}
	}
}

func TestFillDefaults(t *testing.T) {
	c := Default()
	c.DataDir = "/var/lib/routing"
	c.FillDefaults()
	if c.InstanceID == "" || c.Store.SQLite.Path != "/var/lib/routing/routing.db" {
		t.Fatalf("derived defaults not filled: instance %q, sqlite %q", c.InstanceID, c.Store.SQLite.Path)
	}
	filled := deepCopy(c)
	c.FillDefaults()
	if !reflect.DeepEqual(c, filled) {
		t.Fatal("a second FillDefaults changed the config")
	}

	// Set values are kept; production never gets a generated secret.
	c = Default()
	c.RunMode, c.InstanceID, c.Store.SQLite.Path, c.DataDir = ModeProduction, "pod-1", "/data/r.db", t.TempDir()
	c.FillDefaults()
	if err := c.LoadLocalSecret(); err != nil {
		t.Fatal(err)
	}
	if c.InstanceID != "pod-1" || c.Store.SQLite.Path != "/data/r.db" || c.JWTSecret != "" || c.LocalSecret {
		t.Fatalf("FillDefaults overrode set values or gave production a generated secret: %+v", c)
	}
}
