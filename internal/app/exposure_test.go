package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/demo"
	"github.com/go-routing-service/routingservice/internal/testkit"
)

// nonLoopbackAddrs are the machine's own addresses other than loopback
// (IPv6 link-local ones left out: they need a zone to dial).
func nonLoopbackAddrs(t *testing.T) []net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []net.IP
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() || ipn.IP.IsMulticast() {
			continue
		}
		out = append(out, ipn.IP)
	}
	return out
}

// defaultHost keeps the host of a default listen address and takes any
// free port, so the test runs beside other instances.
func defaultHost(t *testing.T, addr string) string {
	t.Helper()
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(host, "0")
}

// An instance on the default listen addresses is reachable on loopback and
// refuses connections on every other address of the machine.
func TestDefaultListenersAreLoopbackOnly(t *testing.T) {
	others := nonLoopbackAddrs(t)
	if len(others) == 0 {
		t.Skip("the machine has no non-loopback address to try")
	}
	def := config.Default()
	ta := startApp(t, func(c *config.Config) {
		c.API.Listen = defaultHost(t, def.API.Listen)
		c.Realtime.Listen = defaultHost(t, def.Realtime.Listen)
		c.Ops.Listen = defaultHost(t, def.Ops.Listen)
	})
	for name, addr := range map[string]string{"api": ta.app.APIAddr(), "websocket": ta.app.WSAddr(), "ops": ta.app.OpsAddr()} {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", port), 5*time.Second)
		if err != nil {
			t.Fatalf("%s on 127.0.0.1:%s: %v", name, port, err)
		}
		c.Close()
		for _, ip := range others {
			target := net.JoinHostPort(ip.String(), port)
			c, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err == nil {
				c.Close()
				t.Errorf("%s (listening on %s) accepted a connection on %s", name, addr, target)
				continue
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s on %s: %v, want connection refused", name, target, err)
			}
		}
	}
}

// Without demo.enabled there is no demo and no token endpoint.
func TestDemoOffByDefault(t *testing.T) {
	ta := startApp(t, nil)
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/demo/"}, {http.MethodGet, "/demo/index.html"}, {http.MethodPost, demo.TokenPath},
	} {
		req, _ := http.NewRequest(tc.method, ta.apiURL+tc.path, strings.NewReader(`{"sub":"urn:sm:user:bob"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), `"not_found"`) {
			t.Errorf("%s %s without the demo: %d %s, want 404", tc.method, tc.path, resp.StatusCode, b)
		}
	}
}

// With the demo on, the API answers only by loopback or configured host
// names: a page on a DNS-rebound name (Host: evil.example) gets 403 and no
// token, on the demo's paths and on /v1 alike.
func TestDemoRefusesForeignHosts(t *testing.T) {
	ta := startApp(t, func(c *config.Config) {
		c.Demo.Enabled = true
		c.Realtime.AllowedHosts = append(c.Realtime.AllowedHosts, "dev.example")
	})
	_, port, _ := net.SplitHostPort(ta.app.APIAddr())
	do := func(method, path, host, token string) (int, string) {
		t.Helper()
		body := io.Reader(nil)
		if method == http.MethodPost {
			body = strings.NewReader(`{"sub":"urn:sm:user:bob"}`)
		}
		req, _ := http.NewRequest(method, ta.apiURL+path, body)
		req.Host = host
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	valid, err := auth.Sign([]byte(ta.cfg.JWTSecret), "urn:sm:user:bob", time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.nip.io:" + port} {
		for _, r := range []struct{ method, path, token string }{
			{http.MethodPost, demo.TokenPath, ""}, {http.MethodGet, "/demo/", ""}, {http.MethodGet, "/v1/messages", valid},
		} {
			code, body := do(r.method, r.path, host, r.token)
			var e struct {
				Error struct{ Code string } `json:"error"`
			}
			if code != http.StatusForbidden || json.Unmarshal([]byte(body), &e) != nil || e.Error.Code != "host_not_allowed" || strings.Contains(body, `"token"`) {
				t.Errorf("%s %s with Host %s: %d %s, want 403 host_not_allowed", r.method, r.path, host, code, body)
			}
		}
	}
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port, "[::1]:" + port, "dev.example:" + port} {
		code, body := do(http.MethodPost, demo.TokenPath, host, "")
		var tok demo.TokenAnswer
		if code != http.StatusOK || json.Unmarshal([]byte(body), &tok) != nil || tok.Token == "" {
			t.Fatalf("POST %s with Host %s: %d %s, want a token", demo.TokenPath, host, code, body)
		}
		if code, body := do(http.MethodGet, "/v1/messages", host, tok.Token); code != http.StatusOK {
			t.Fatalf("GET /v1/messages with Host %s and the demo's token: %d %s", host, code, body)
		}
	}
}

// newLoggedApp makes (but does not run) an instance like startApp's and
// returns what it logged.
func newLoggedApp(t *testing.T, mutate func(*config.Config)) (*app.App, *testkit.Buffer) {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.API.Listen, cfg.Realtime.Listen, cfg.Ops.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Admin.Socket = "-"
	cfg.Push.WebPush.Enabled = false
	cfg.JWTSecret = "test-secret-0123456789-0123456789-abcdef"
	if mutate != nil {
		mutate(&cfg)
	}
	cfg.FillDefaults()
	if err := cfg.LoadLocalSecret(); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	buf := &testkit.Buffer{}
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewTextHandler(buf, nil)))
	if err != nil {
		t.Fatalf("%v\n%s", err, buf)
	}
	t.Cleanup(a.Close)
	return a, buf
}

// A listener on every interface is an explicit choice that the log names at
// start; the loopback defaults log no such warning.
func TestAllInterfacesListenIsLogged(t *testing.T) {
	_, quiet := newLoggedApp(t, nil)
	if strings.Contains(quiet.String(), "reachable from other machines") {
		t.Fatalf("loopback listeners logged an exposure warning:\n%s", quiet)
	}
	_, log := newLoggedApp(t, func(c *config.Config) { c.API.Listen = ":0" })
	var warned bool
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "key=api.listen") && strings.Contains(l, "reachable from other machines") {
			warned = true
		}
		if strings.Contains(l, "key=realtime.listen") || strings.Contains(l, "key=ops.listen") {
			t.Errorf("a loopback listener named as exposed: %s", l)
		}
	}
	if !warned {
		t.Fatalf("api.listen on every interface logged no warning naming the key:\n%s", log)
	}
}

// With the demo on, the log gives its address at start.
func TestDemoURLIsLogged(t *testing.T) {
	a, log := newLoggedApp(t, func(c *config.Config) { c.Demo.Enabled = true })
	want := "url=http://" + a.APIAddr() + "/demo/"
	if !strings.Contains(log.String(), want) {
		t.Fatalf("the log does not give the demo's address %s:\n%s", want, log)
	}
	_, off := newLoggedApp(t, nil)
	if strings.Contains(off.String(), "/demo/") {
		t.Fatalf("the demo's address logged with the demo off:\n%s", off)
	}
}

// An existing data dir that group and others may read is tightened to the
// owner at start, with a warning; what the service generates there is the
// owner's only.
func TestDataDirIsTightened(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	_, log := newLoggedApp(t, func(c *config.Config) {
		c.DataDir = dir
		c.JWTSecret = ""              // generated into the data dir
		c.Push.WebPush.Enabled = true // a VAPID key pair generated there
		c.Admin.Socket = ""           // the admin socket there
		c.Store.SQLite.Path = ""      // the store there
	})
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode %v after start, want 0700", st.Mode().Perm())
	}
	if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "tightened") || !strings.Contains(log.String(), "was=-rwxr-xr-x") {
		t.Fatalf("no warning about the tightened data dir:\n%s", log)
	}
	for _, name := range []string{config.LocalSecretFile, "vapid.json", "routing.db", "admin.sock"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: group or others may use it", name, st.Mode().Perm())
		}
	}
}
