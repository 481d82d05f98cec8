package main

import (
	"bufio"
	"errors"
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

	"github.com/go-routing-service/routingservice/internal/config"
)

// `serve` with no configuration at all listens on loopback only: its API,
// WebSocket and operations ports answer on 127.0.0.1 and refuse
// connections on every other address of the machine.
func TestDefaultServeIsLoopbackOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	var others []string
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() && !ipn.IP.IsMulticast() {
			others = append(others, ipn.IP.String())
		}
	}
	if len(others) == 0 {
		t.Skip("the machine has no non-loopback address to try")
	}
	def := config.Default()
	ports := map[string]string{}
	for name, addr := range map[string]string{"api": def.API.Listen, "websocket": def.Realtime.Listen, "ops": def.Ops.Listen} {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		// The defaults' fixed ports: another process holding one would make
		// the child fail for a reason that is not the one tested here.
		ln, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Skipf("the default %s port %s is taken on this machine: %v", name, port, err)
		}
		ln.Close()
		ports[name] = port
	}

	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Dir = dir // no ./config.yaml
	cmd.Env = append(os.Environ(), "ROUTINGSERVICE_CHILD=1", "ROUTING_CONFIG=", "ROUTING_DATA_DIR="+filepath.Join(dir, "data"),
		"ROUTING_ROLES=", "JWT_SECRET=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			t.Log("child:", s.Text())
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := http.Get("http://127.0.0.1:" + ports["ops"] + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("serve exited before ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("serve not ready in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for name, port := range ports {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, 5*time.Second)
		if err != nil {
			t.Fatalf("%s on 127.0.0.1:%s: %v", name, port, err)
		}
		c.Close()
		for _, ip := range others {
			target := net.JoinHostPort(ip, port)
			c, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err == nil {
				c.Close()
				t.Errorf("default serve: the %s port accepted a connection on %s", name, target)
				continue
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("default serve: %s on %s: %v, want connection refused", name, target, err)
			}
		}
	}
	// And no demo unless asked for.
	resp, err := http.Get("http://127.0.0.1:" + ports["api"] + "/demo/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("default serve: GET /demo/ %d, want 404", resp.StatusCode)
	}
}

// `serve --demo` serves the demo and its token endpoint to loopback host
// names only; a request by another Host gets 403 and no token.
func TestServeDemoFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	c := startChildArgs(t, []string{"--demo"}, "data_dir: "+t.TempDir()+"\n")
	post := func(host string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, c.api+"/demo/token", strings.NewReader(`{"sub":"urn:sm:user:bob"}`))
		req.Header.Set("Content-Type", "application/json")
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(""); code != http.StatusOK || !strings.Contains(body, `"token"`) {
		t.Fatalf("POST /demo/token by 127.0.0.1: %d %s", code, body)
	}
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(c.api, "http://"))
	if code, body := post("evil.example:" + port); code != http.StatusForbidden || strings.Contains(body, `"token"`) {
		t.Fatalf("POST /demo/token by Host evil.example: %d %s, want 403 and no token", code, body)
	}
}

// `serve --demo` refuses to start where the token endpoint could be reached
// from elsewhere, naming the key: an API on every interface, production.
// (serveConfig is what serve loads before it opens anything.)
func TestServeDemoRefused(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("JWT_SECRET", testSecret)
	t.Setenv("ROUTING_DATA_DIR", filepath.Join(dir, "data"))
	for _, tc := range []struct{ name, yaml, key string }{
		{"api on every interface", "api: {listen: ':0'}\n", "api.listen"},
		{"api on 0.0.0.0", "api: {listen: '0.0.0.0:0'}\n", "api.listen"},
		{"production", "run_mode: production\nsingle_node: true\napi: {listen: '127.0.0.1:0'}\npush: {webpush: {enabled: false}}\n", "demo.enabled"},
	} {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(tc.yaml+"realtime: {listen: '127.0.0.1:0'}\nops: {listen: '127.0.0.1:0'}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := serveConfig([]string{"--demo", "--config", p}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "config key "+tc.key+":") {
			t.Errorf("serve --demo with %s: %v, want an error naming %s", tc.name, err, tc.key)
		}
		// Without --demo the same configuration is accepted (checked only:
		// config check opens nothing).
		if err := run([]string{"config", "check", "--config", p}, io.Discard, io.Discard); err != nil {
			t.Errorf("%s without --demo is refused, so the refusal above proves nothing: %v", tc.name, err)
		}
	}
}
