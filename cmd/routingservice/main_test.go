package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// The test binary doubles as the service: with ROUTINGSERVICE_CHILD set it
// runs the command line it was given, as the real binary would.
func TestMain(m *testing.M) {
	if os.Getenv("ROUTINGSERVICE_CHILD") == "1" {
		if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "routingservice:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const testSecret = "kill-test-secret-0123456789-0123456789"

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type child struct {
	cmd    *exec.Cmd
	api    string
	ws     string
	ops    string
	config string // the config file's path, for the tool commands
	exited chan error
}

// startChild runs `serve` in a child process on dataDir and waits until it is ready.
func startChild(t *testing.T, dataDir string) *child {
	t.Helper()
	return startChildConfig(t, "data_dir: "+dataDir+"\n")
}

// startChildConfig runs `serve` in a child process with extra configuration
// (YAML; the child's listeners, log level and rate limit replace its own)
// and environment, and waits until it is ready.
func startChildConfig(t *testing.T, extra string, env ...string) *child {
	t.Helper()
	return startChildArgs(t, nil, extra, env...)
}

// startChildArgs is startChildConfig with extra arguments to `serve`.
func startChildArgs(t *testing.T, args []string, extra string, env ...string) *child {
	t.Helper()
	api, ws, ops := freePort(t), freePort(t), freePort(t)
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	var defaults string
	if !strings.Contains(extra, "push:") {
		defaults = "push: {webpush: {enabled: false}}\n"
	}
	cfg := mergeYAML(t, defaults, extra, fmt.Sprintf("api: {listen: %q, rate_limit: 0}\nrealtime: {listen: %q, max_conns_per_ip: 0, connect_rate_per_ip: 0, connect_rate_per_user: 0}\nops: {listen: %q}\nlog: {level: warn}\n",
		api, ws, ops))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], append([]string{"serve", "--config", cfgPath}, args...)...)
	cmd.Env = append(append(os.Environ(), "ROUTINGSERVICE_CHILD=1", "JWT_SECRET="+testSecret), env...)
	// The child dies with the test process, even when that one is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, api: "http://" + api, ws: "ws://" + ws, ops: "http://" + ops, config: cfgPath, exited: make(chan error, 1)}
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			t.Log("child:", s.Text())
		}
		c.exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := http.Get(c.ops + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return c
			}
		}
		select {
		case err := <-c.exited:
			t.Fatalf("child exited before ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("child not ready in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testToken(t *testing.T, sub string) string {
	tok, err := auth.Sign([]byte(testSecret), sub, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A message answered 202 survives kill -9 of the process: after a restart on
// the same data dir it is fetched, and delivered on connect.
func TestAcceptedMessagesSurviveKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dataDir := t.TempDir()
	c := startChild(t, dataDir)
	alice := &client.Client{APIURL: c.api, WSURL: c.ws, Token: testToken(t, "urn:sm:user:alice")}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 200
	accepted := map[string]bool{}
	for i := 0; i < n; i++ {
		acc, err := alice.Send(ctx, client.Message{Recipient: "urn:sm:user:bob", Payload: []byte(fmt.Sprint(i))})
		if err != nil {
			t.Fatal(err)
		}
		accepted[acc.ID] = true
	}
	// No drain: SIGKILL right after the last 202.
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.exited

	c2 := startChild(t, dataDir)
	bob := &client.Client{APIURL: c2.api, WSURL: c2.ws, Token: testToken(t, "urn:sm:user:bob")}
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]bool
	for {
		got = map[string]bool{}
		cursor := ""
		for {
			p, err := bob.Fetch(ctx, cursor, 500)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range p.Messages {
				got[m.ID] = true
			}
			if p.NextCursor == "" {
				break
			}
			cursor = p.NextCursor
		}
		if len(got) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for id := range accepted {
		if !got[id] {
			t.Fatalf("accepted message %s lost after kill -9 (%d of %d found)", id, len(got), n)
		}
	}
	// And delivered on connect, as backlog.
	conn, err := bob.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	seen := map[string]bool{}
	for len(seen) < n {
		env, err := conn.Next(ctx)
		if err != nil {
			t.Fatalf("backlog after restart: %v (%d of %d)", err, len(seen), n)
		}
		seen[env.ID] = true
	}
	for id := range accepted {
		if !seen[id] {
			t.Fatalf("message %s not delivered on connect", id)
		}
	}
}

// Ctrl-C (SIGINT) drains and exits cleanly.
func TestInterruptExitsCleanly(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	c := startChild(t, t.TempDir())
	if err := c.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.exited:
		if err != nil {
			t.Fatalf("exit after SIGINT: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("did not exit after SIGINT")
	}
}

// `token` prints a token that the service accepts; production refuses it.
func TestTokenCommand(t *testing.T) {
	t.Setenv("JWT_SECRET", testSecret)
	t.Setenv("ROUTING_CONFIG", "")
	var out strings.Builder
	if err := run([]string{"token", "--sub", "urn:sm:user:alice", "--ttl", "5m"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(context.Background(), auth.Options{Config: auth.Config{Algorithms: []string{"HS256"}}, HS256Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	cl, err := v.Verify(strings.TrimSpace(out.String()))
	if err != nil || cl.Subject != "urn:sm:user:alice" {
		t.Fatalf("token not accepted: %v %+v", err, cl)
	}
	if err := run([]string{"token", "--sub", "bad"}, io.Discard, io.Discard); err == nil {
		t.Fatal("bad --sub accepted")
	}
	prod := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(prod, []byte("run_mode: production\nbus: {type: nats, nats: {url: 'tls://127.0.0.1:4222', credentials_file: /c}}\n"+
		"store: {type: postgres}\npresence: {type: redis, redis: {tls: true}}\npush: {webpush: {vapid_private_key_file: /v}}\n"), 0o600)
	t.Setenv("DATABASE_URL", "postgres://x?sslmode=verify-full")
	t.Setenv("REDIS_PASSWORD", "p")
	t.Setenv("JWT_SECRET", strings.Repeat("p", 40))
	if _, err := loadConfig(flag.NewFlagSet("t", flag.ContinueOnError), []string{"--config", prod}); err != nil {
		t.Fatalf("the production config is not valid, so the refusal below proves nothing: %v", err)
	}
	if err := run([]string{"token", "--config", prod, "--sub", "urn:sm:user:alice"}, io.Discard, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "production") {
		t.Fatalf("token ran in production mode: %v", err)
	}
}

// Without JWT_SECRET, `serve` and `token` share a random secret generated
// into the data dir: the token it prints is accepted, one signed with the
// formerly published development secret is not.
func TestLocalSecretIsSharedWithTokenAndNotPublished(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dir := t.TempDir()
	c := startChildConfig(t, "data_dir: "+dir+"\n", "JWT_SECRET=")
	t.Setenv("JWT_SECRET", "")
	t.Setenv("ROUTING_CONFIG", "")
	t.Setenv("ROUTING_DATA_DIR", dir)
	var out strings.Builder
	if err := run([]string{"token", "--sub", "urn:sm:user:alice"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	published, err := auth.Sign([]byte("routingservice-development-secret-do-not-use-in-production"), "urn:sm:user:alice", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(tok string) int {
		req, _ := http.NewRequest(http.MethodGet, c.api+"/v1/messages", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := fetch(strings.TrimSpace(out.String())); code != http.StatusOK {
		t.Fatalf("the token command's token: %d, want 200", code)
	}
	if code := fetch(published); code != http.StatusUnauthorized {
		t.Fatalf("a token signed with the published secret: %d, want 401", code)
	}
}
