package main

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/api/iterator"

	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
	"github.com/go-routing-service/routingservice/internal/bus/natsbus"
	"github.com/go-routing-service/routingservice/internal/store/postgres"
)

const connectSecret = "connect-test-secret-0123456789-0123456789"

// connectCheck runs `config check --connect` in this process on a
// configuration made of yaml and a fresh data dir, and returns its output
// and error and the backend lines it printed, by backend.
func connectCheck(t *testing.T, yaml string, args ...string) (string, error, map[string]string) {
	t.Helper()
	t.Setenv("ROUTING_CONFIG", "")
	t.Setenv("ROUTING_DATA_DIR", "")
	t.Setenv("JWT_SECRET", connectSecret) // loading the configuration creates nothing
	path := writeConnectConfig(t, yaml)
	var out strings.Builder
	err := run(append([]string{"config", "check", "--config", path, "--connect"}, args...), &out, io.Discard)
	return out.String(), err, backendLines(out.String())
}

func writeConnectConfig(t *testing.T, yaml string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	body := "data_dir: " + q(filepath.Join(dir, "data")) + "\nadmin: {socket: '-'}\n" + yaml
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var backendLine = regexp.MustCompile(`(?m)^(ok  |FAIL) (\w+): (.*)$`)

// backendLines maps each backend to its line's status and text: "ok   ..."
// or "FAIL ...".
func backendLines(out string) map[string]string {
	m := map[string]string{}
	for _, l := range backendLine.FindAllStringSubmatch(out, -1) {
		m[l[2]] = strings.TrimSpace(l[1]) + " " + l[3]
	}
	return m
}

func wantLine(t *testing.T, lines map[string]string, backend, status string, says ...string) {
	t.Helper()
	l, ok := lines[backend]
	if !ok {
		t.Fatalf("no %s line in %v", backend, lines)
	}
	if !strings.HasPrefix(l, status+" ") {
		t.Fatalf("%s: %q, want %s", backend, l, status)
	}
	for _, s := range says {
		if !strings.Contains(l, s) {
			t.Errorf("%s line %q does not say %q", backend, l, s)
		}
	}
}

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Skipf("set %s to run this test", name)
	}
	return v
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// The embedded default has nothing to reach: one line per backend, all ok,
// and nothing created (not even the data dir).
func TestConfigCheckConnectEmbedded(t *testing.T) {
	out, err, lines := connectCheck(t, "")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	wantLine(t, lines, "bus", "ok", "embedded", "starts with the service")
	wantLine(t, lines, "store", "ok", "sqlite", "does not exist yet")
	wantLine(t, lines, "presence", "ok", "in process")
	if len(lines) != 3 {
		t.Fatalf("lines %v, want bus, store and presence", lines)
	}
}

// The store's directory must be one serve can create the database in: a
// path under a file, or under a directory that is not the data dir and
// does not exist, fails and names the store.
func TestConfigCheckConnectSQLitePath(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path, status, says string
	}{
		{"under a file", filepath.Join(file, "routing.db"), "FAIL", "not a directory"},
		{"missing directory", filepath.Join(t.TempDir(), "no", "such", "routing.db"), "FAIL", "does not exist"},
		{"existing directory", filepath.Join(t.TempDir(), "routing.db"), "ok", "writable"},
		{"a directory, not a file", t.TempDir(), "FAIL", "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err, lines := connectCheck(t, "store: {sqlite_path: "+q(c.path)+"}\n")
			wantLine(t, lines, "store", c.status, c.says)
			if (err != nil) != (c.status == "FAIL") {
				t.Fatalf("error %v with the store %s\n%s", err, c.status, out)
			}
		})
	}
}

// Against the machine's PostgreSQL, Redis and NATS, every backend is ok.
func TestConfigCheckConnectSharedServices(t *testing.T) {
	pgURL := requireEnv(t, "ROUTING_TEST_POSTGRES_URL")
	redisAddr := requireEnv(t, "ROUTING_TEST_REDIS_ADDR")
	natsURL := requireEnv(t, "ROUTING_TEST_NATS_URL")
	t.Setenv("DATABASE_URL", pgURL)
	out, err, lines := connectCheck(t, fmt.Sprintf(`bus: {type: nats, nats: {url: %q, subject_prefix: %s}}
store: {type: postgres, postgres_schema: %s}
presence: {type: redis, redis: {addr: %q}}
`, natsURL, randomName("chk"), randomName("check_"), redisAddr))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	wantLine(t, lines, "bus", "ok", "JetStream reachable", "0 of 4 streams exist", "serve creates")
	wantLine(t, lines, "store", "ok", "postgres ", "does not exist; serve creates it")
	wantLine(t, lines, "presence", "ok", redisAddr, "PING answered")
}

// `--connect` changes nothing: a PostgreSQL schema and NATS streams serve
// would create are reported missing and are still missing afterwards; once
// made (by the store and bus serve opens), they are reported as they are.
func TestConfigCheckConnectChangesNothing(t *testing.T) {
	t.Run("PostgreSQL", func(t *testing.T) {
		pgURL := requireEnv(t, "ROUTING_TEST_POSTGRES_URL")
		t.Setenv("DATABASE_URL", pgURL)
		schema := randomName("check_")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pgURL)
		if err != nil {
			t.Fatal(err)
		}
		// The schema is dropped, then the connection closed, after the test
		// (a deferred Close would run first and leave the schema behind).
		t.Cleanup(func() {
			if _, err := conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
				t.Errorf("drop schema %s: %v", schema, err)
			}
			conn.Close(context.Background())
		})
		exists := func() bool {
			var ok bool
			if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&ok); err != nil {
				t.Fatal(err)
			}
			return ok
		}
		yaml := "store: {type: postgres, postgres_schema: " + schema + "}\n"
		out, err, lines := connectCheck(t, yaml)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		wantLine(t, lines, "store", "ok", "schema "+schema+" does not exist")
		if exists() {
			t.Fatalf("config check --connect created schema %s", schema)
		}
		s, err := postgres.Open(ctx, pgURL, postgres.Options{Schema: schema, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		_, err, lines = connectCheck(t, yaml)
		if err != nil {
			t.Fatal(err)
		}
		wantLine(t, lines, "store", "ok", "schema "+schema+" at migration ")
		if l := lines["store"]; regexp.MustCompile(`migration (\d+) of (\d+)`).FindStringSubmatch(l) == nil ||
			strings.Contains(l, "serve applies") {
			t.Fatalf("a migrated schema: %q", l)
		}
	})
	t.Run("NATS", func(t *testing.T) {
		natsURL := requireEnv(t, "ROUTING_TEST_NATS_URL")
		prefix := randomName("chk")
		nc, err := nats.Connect(natsURL)
		if err != nil {
			t.Fatal(err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		// The streams are deleted, then the connection closed, after the
		// test.
		t.Cleanup(func() {
			for _, s := range []string{"ingress", "delivery", "ingress-dlq", "delivery-dlq"} {
				if err := js.DeleteStream(context.Background(), prefix+"-"+s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
					t.Errorf("delete stream %s-%s: %v", prefix, s, err)
				}
			}
			nc.Close()
		})
		yaml := fmt.Sprintf("bus: {type: nats, nats: {url: %q, subject_prefix: %s}}\n", natsURL, prefix)
		out, err, lines := connectCheck(t, yaml)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		wantLine(t, lines, "bus", "ok", "0 of 4 streams exist", "0 of 1 consumer exists", prefix+"-ingress", prefix+"-pipeline")
		names := js.StreamNames(ctx)
		for n := range names.Name() {
			if strings.HasPrefix(n, prefix) {
				t.Errorf("config check --connect created stream %s", n)
			}
		}
		if err := names.Err(); err != nil {
			t.Fatal(err)
		}
		d, err := natsbus.New(ctx, nc, natsbus.Config{SubjectPrefix: prefix, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
		_, err, lines = connectCheck(t, yaml)
		if err != nil {
			t.Fatal(err)
		}
		wantLine(t, lines, "bus", "ok", "4 of 4 streams exist", "1 of 1 consumer exists")
		if strings.Contains(lines["bus"], "serve creates") {
			t.Fatalf("bus line after the streams were made: %q", lines["bus"])
		}
	})
}

// Pub/Sub (the official fake, over gRPC): the topics and subscriptions
// serve would create are reported and not created; once serve's driver has
// made them, they are all found.
func TestConfigCheckConnectPubSub(t *testing.T) {
	srv := pstest.NewServerWithPort(0)
	t.Cleanup(func() { _ = srv.Close() })
	t.Setenv("PUBSUB_EMULATOR_HOST", srv.Addr)
	const project = "check-test"
	yaml := "bus: {type: pubsub, pubsub: {project_id: " + project + "}}\n"
	out, err, lines := connectCheck(t, yaml)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	wantLine(t, lines, "bus", "ok", "project "+project, "0 of 4 topics exist", "0 of 3 subscriptions exist", "topic routing-ingress", "subscription routing-pipeline")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := pubsub.NewClient(ctx, project)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	it := client.TopicAdminClient.ListTopics(ctx, &pubsubpb.ListTopicsRequest{Project: "projects/" + project})
	if tp, err := it.Next(); !errors.Is(err, iterator.Done) {
		t.Fatalf("config check --connect created topic %v (%v)", tp.GetName(), err)
	}

	// As serve makes them with the default configuration (the earlier
	// layout's shared delivery topic included, legacy_shared_delivery).
	d, err := gcppubsub.New(ctx, gcppubsub.Config{ProjectID: project, LegacySharedDelivery: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err, lines = connectCheck(t, yaml)
	if err != nil {
		t.Fatal(err)
	}
	wantLine(t, lines, "bus", "ok", "4 of 4 topics exist", "3 of 3 subscriptions exist")
	if strings.Contains(lines["bus"], "serve creates") {
		t.Fatalf("bus line after setup: %q", lines["bus"])
	}
}

// A key set served over HTTP is fetched and its keys counted; one that
// cannot be used fails the jwks line.
func TestConfigCheckConnectJWKS(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPub, err := ec.PublicKey.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	raw := ecPub.Bytes() // 0x04 || X || Y
	ecJWK := map[string]string{"kty": "EC", "crv": "P-256", "kid": "ec1", "alg": "ES256", "use": "sig",
		"x": b64(raw[1:33]), "y": b64(raw[33:])}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edJWK := map[string]string{"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": b64(edPub)}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	encJWK := map[string]string{"kty": "OKP", "crv": "X25519", "kid": "enc1", "use": "enc", "x": b64(x.PublicKey().Bytes())}
	set := func(keys ...map[string]string) []byte {
		b, _ := json.Marshal(map[string]any{"keys": keys})
		return b
	}
	mux := http.NewServeMux()
	serve := func(path string, status int, body []byte) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write(body)
		})
	}
	serve("/good", http.StatusOK, set(ecJWK, edJWK, encJWK))
	serve("/missing", http.StatusNotFound, []byte(`{"error":"not found"}`))
	serve("/html", http.StatusOK, []byte("<html>sign in</html>"))
	serve("/other-alg", http.StatusOK, set(edJWK))
	mux.Handle("/redirect", http.RedirectHandler("/good", http.StatusFound))
	idp := httptest.NewServer(mux)
	defer idp.Close()

	cases := []struct {
		path   string
		status string
		says   []string
	}{
		{"/good", "ok", []string{"2 usable keys", "ES256: 1", "EdDSA: 1", "1 skipped", `kid "enc1"`}},
		{"/missing", "FAIL", []string{"status 404", "auth.jwks_url"}},
		{"/html", "FAIL", []string{"jwks decode"}},
		{"/other-alg", "FAIL", []string{"no key for ES256"}},
		{"/redirect", "FAIL", []string{"status 302"}},
	}
	for _, c := range cases {
		t.Run(strings.TrimPrefix(c.path, "/"), func(t *testing.T) {
			out, err, lines := connectCheck(t, "auth: {algorithms: [HS256, ES256], jwks_url: "+q(idp.URL+c.path)+"}\n")
			wantLine(t, lines, "jwks", c.status, c.says...)
			if (err != nil) != (c.status == "FAIL") {
				t.Fatalf("error %v with jwks %s\n%s", err, c.status, out)
			}
		})
	}
}

// With every backend on a port nothing listens on, each backend fails with
// a line naming it and the command exits with status 1.
func TestConfigCheckConnectClosedPorts(t *testing.T) {
	addr := closedPort(t)
	path := writeConnectConfig(t, fmt.Sprintf(`bus: {type: nats, nats: {url: 'nats://%[1]s'}}
store: {type: postgres}
presence: {type: redis, redis: {addr: %[1]q}}
auth: {algorithms: [HS256, RS256], jwks_url: 'http://%[1]s/jwks'}
`, addr))
	lines, code := connectChild(t, path, "DATABASE_URL=postgres://postgres@"+addr+"/test?sslmode=disable")
	if code != 1 {
		t.Fatalf("exit status %d, want 1; lines %v", code, lines)
	}
	wantLine(t, lines, "bus", "FAIL", "nats", addr)
	wantLine(t, lines, "store", "FAIL", "postgres", "DATABASE_URL")
	wantLine(t, lines, "presence", "FAIL", "redis", addr)
	wantLine(t, lines, "jwks", "FAIL", addr)
	// nats.go reports a refused connection as no server available.
	for b, says := range map[string]string{"bus": "no servers available", "store": "refused", "presence": "refused", "jwks": "refused"} {
		if !strings.Contains(lines[b], says) {
			t.Errorf("%s line does not say %q: %q", b, says, lines[b])
		}
	}

	// Pub/Sub's client retries an unreachable endpoint until the timeout.
	path = writeConnectConfig(t, "bus: {type: pubsub, pubsub: {project_id: p}}\n")
	start := time.Now()
	lines, code = connectChild(t, path, "PUBSUB_EMULATOR_HOST="+addr, "--timeout", "1s")
	if code != 1 {
		t.Fatalf("exit status %d, want 1; lines %v", code, lines)
	}
	wantLine(t, lines, "bus", "FAIL", "pubsub", "no answer within the 1s timeout")
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the check took %v with a 1s timeout", d)
	}
}

// connectChild runs `config check --connect` on path in a child process
// with env added, and returns its backend lines and exit status.
func connectChild(t *testing.T, path string, envAndArgs ...string) (map[string]string, int) {
	t.Helper()
	args := []string{"config", "check", "--config", path, "--connect"}
	env := append(os.Environ(), "ROUTINGSERVICE_CHILD=1", "JWT_SECRET="+connectSecret, "ROUTING_DATA_DIR=", "ROUTING_CONFIG=")
	for i := 0; i < len(envAndArgs); i++ {
		if strings.HasPrefix(envAndArgs[i], "--") {
			args = append(args, envAndArgs[i:]...)
			break
		}
		env = append(env, envAndArgs[i])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	if code != 0 && !strings.Contains(stderr.String(), "backends failed") {
		t.Errorf("stderr does not say backends failed:\n%s", stderr.String())
	}
	return backendLines(stdout.String()), code
}

// The Redis check connects as serve does: with REDIS_PASSWORD (a private
// redis-server that requires one) and presence.redis.tls (the machine's
// Redis speaks no TLS).
func TestConfigCheckConnectRedisSettings(t *testing.T) {
	private := privateRedis(t, "--requirepass", "s3cret-for-the-check")
	plain := "presence: {type: redis, redis: {addr: " + q(private) + "}}\n"
	cases := []struct {
		name, yaml, password, says string
	}{
		{"right password", plain, "s3cret-for-the-check", ""},
		{"wrong password", plain, "not-the-password", "WRONGPASS"},
		{"no password", plain, "", "NOAUTH"},
	}
	if shared := os.Getenv("ROUTING_TEST_REDIS_ADDR"); shared != "" {
		cases = append(cases, struct{ name, yaml, password, says string }{
			"TLS to a server without", "presence: {type: redis, redis: {addr: " + q(shared) + ", tls: true}}\n", "", "presence.redis.tls is true"})
	} else {
		t.Log("set ROUTING_TEST_REDIS_ADDR to check presence.redis.tls too")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("REDIS_PASSWORD", c.password)
			out, err, lines := connectCheck(t, c.yaml, "--timeout", "1s")
			if c.says == "" {
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				wantLine(t, lines, "presence", "ok", "with REDIS_PASSWORD", "PING answered")
				return
			}
			if err == nil {
				t.Fatalf("accepted:\n%s", out)
			}
			wantLine(t, lines, "presence", "FAIL", "redis", c.says)
		})
	}
}

// privateRedis starts a redis-server on a free loopback port, keeping
// nothing on disk, stopped when the test ends; it returns its address.
func privateRedis(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed")
	}
	addr := closedPort(t)
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("redis-server", append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir()}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case <-exited:
			t.Fatal("redis-server exited at start")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server does not accept connections on %s", addr)
		}
	}
}
