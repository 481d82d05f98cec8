package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
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
	c.FillDefaults()
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if !c.DevSecret || c.JWTSecret != DevJWTSecret {
		t.Fatal("local mode without JWT_SECRET must use the development secret")
	}
	if c.InstanceID == "" || c.Store.SQLitePath == "" {
		t.Fatal("derived defaults not filled")
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
		{"pubsub ack deadline", "bus: {type: pubsub, ack_deadline: 1s, pubsub: {project_id: p}}", nil, "bus.ack_deadline"},
		{"bad instance id", "instance_id: 'a b'", nil, "instance_id"},
		{"bad traces", "telemetry: {traces: zipkin}", nil, "telemetry.traces"},
		{"bad otlp endpoint", "telemetry: {traces: otlp, otlp_endpoint: 'collector:4317'}", nil, "telemetry.otlp_endpoint"},
		{"bad sample ratio", "telemetry: {sample_ratio: 2}", nil, "telemetry.sample_ratio"},
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

func TestProductionAcceptsACompleteSetup(t *testing.T) {
	c := Default()
	y := `run_mode: production
bus: {type: nats, nats: {url: "nats://127.0.0.1:4222"}}
store: {type: postgres}
presence: {type: redis}
push: {webpush: {vapid_private_key_file: /run/secrets/vapid}}
`
	if err := Parse([]byte(y), &c); err != nil {
		t.Fatal(err)
	}
	c.FromEnv(func(k string) string {
		return map[string]string{"JWT_SECRET": strings.Repeat("k", 48), "DATABASE_URL": "postgres://x"}[k]
	})
	c.FillDefaults()
	if err := c.Check(); err != nil {
		t.Fatal(err)
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
		return map[string]string{"DATABASE_URL": "postgres://routing@db/routing", "ROUTING_INSTANCE_ID": "pod-1"}[k]
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
	if c.InstanceID == "" || c.Store.SQLitePath != "/var/lib/routing/routing.db" || c.JWTSecret != DevJWTSecret || !c.DevSecret {
		t.Fatalf("derived defaults not filled: instance %q, sqlite %q, dev secret %v", c.InstanceID, c.Store.SQLitePath, c.DevSecret)
	}
	filled := deepCopy(c)
	c.FillDefaults()
	if !reflect.DeepEqual(c, filled) {
		t.Fatal("a second FillDefaults changed the config")
	}

	// Set values are kept; production never gets the development secret.
	c = Default()
	c.RunMode, c.InstanceID, c.Store.SQLitePath = ModeProduction, "pod-1", "/data/r.db"
	c.FillDefaults()
	if c.InstanceID != "pod-1" || c.Store.SQLitePath != "/data/r.db" || c.JWTSecret != "" || c.DevSecret {
		t.Fatalf("FillDefaults overrode set values or gave production the development secret: %+v", c)
	}
}
