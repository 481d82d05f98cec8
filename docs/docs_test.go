package docs

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/faulttest"
)

// repoRoot is the repository's top directory (this package is docs/).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// pages are the Markdown files whose links are checked: the top level's
// and docs/'s.
func pages(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	for _, pattern := range []string{"*.md", "docs/*.md"} {
		m, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	if len(out) < 10 {
		t.Fatalf("found only %d pages: %v", len(out), out)
	}
	return out
}

var (
	linkRe    = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)\)`)
	fenceRe   = regexp.MustCompile("(?m)^```")
	headingRe = regexp.MustCompile(`(?m)^#{1,6} +(.+?) *$`)
)

// stripCode removes fenced blocks and inline code, where brackets are not
// links.
func stripCode(s string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "```") {
			in = !in
			continue
		}
		if !in {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return regexp.MustCompile("`[^`]*`").ReplaceAllString(b.String(), "")
}

// anchor is GitHub's anchor of a heading: lower case, punctuation but
// hyphens and underscores dropped, spaces to hyphens.
func anchor(heading string) string {
	heading = strings.ToLower(strings.TrimSpace(heading))
	var b strings.Builder
	for _, r := range heading {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors are the anchors of a Markdown file's headings.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	text := string(b)
	// Headings inside fenced blocks (shell comments) are not headings.
	var kept strings.Builder
	in := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "```") {
			in = !in
			continue
		}
		if !in {
			kept.WriteString(line + "\n")
		}
	}
	for _, m := range headingRe.FindAllStringSubmatch(kept.String(), -1) {
		out[anchor(strings.ReplaceAll(m[1], "`", ""))] = true
	}
	return out
}

// Every relative link of the pages resolves to a file of the repository,
// and an anchor to a heading of the page it names; no relative link leaves
// the repository (no ../ past its root).
func TestLinks(t *testing.T) {
	root := repoRoot(t)
	for _, page := range pages(t, root) {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, page)
		if len(fenceRe.FindAllIndex(b, -1))%2 != 0 {
			t.Errorf("%s: a fenced block is not closed", rel)
		}
		for _, m := range linkRe.FindAllStringSubmatch(stripCode(string(b)), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue // a web address (specifications, the running service's pages)
			}
			file, frag, _ := strings.Cut(target, "#")
			dest := page
			if file != "" {
				dest = filepath.Join(filepath.Dir(page), file)
			}
			if r, err := filepath.Rel(root, dest); err != nil || strings.HasPrefix(r, "..") {
				t.Errorf("%s: %s points outside the repository", rel, target)
				continue
			}
			if _, err := os.Stat(dest); err != nil {
				t.Errorf("%s: %s does not resolve: %v", rel, target, err)
				continue
			}
			if frag != "" && strings.HasSuffix(dest, ".md") && !anchors(t, dest)[frag] {
				t.Errorf("%s: %s: no heading with the anchor #%s", rel, target, frag)
			}
		}
	}
}

// block is one fenced sh block of a page.
type block struct {
	line int
	text string
}

// shellBlocks returns the ```sh blocks of the page at path.
func shellBlocks(t *testing.T, path string) []block {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []block
	var cur *block
	for i, line := range strings.Split(string(b), "\n") {
		switch {
		case cur == nil && strings.TrimSpace(line) == "```sh":
			cur = &block{line: i + 1}
		case cur != nil && strings.TrimSpace(line) == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		}
	}
	if cur != nil {
		t.Fatalf("%s: the block at line %d is not closed", path, cur.line)
	}
	return out
}

// The markers a block's first line may carry (a shell comment to a
// reader):
//
//	# docs-test: skip (why)
//	# docs-test: background, ready when URL answers
//
// A background block runs in the background for the rest of the page, and
// the page goes on once URL answers 200.
var (
	skipRe  = regexp.MustCompile(`^# docs-test: skip\b`)
	bgRe    = regexp.MustCompile(`^# docs-test: background, ready when (\S+) answers`)
	otherRe = regexp.MustCompile(`^# docs-test:`)
)

// script turns a page's blocks into one bash script, ports replaced by
// ports: each block in turn, the background ones started and waited for
// (each poll bounded), the commands echoed.
func script(t *testing.T, path string, ports map[string]string) string {
	t.Helper()
	var s strings.Builder
	s.WriteString("set -euo pipefail\nset -x\n")
	s.WriteString(`ready() { { set +x; } 2>/dev/null; for _ in $(seq 1 600); do curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null && { set -x; return 0; }; sleep 0.1; done; echo "not ready: $1" >&2; return 1; }` + "\n")
	n := 0
	for _, b := range shellBlocks(t, path) {
		text := b.text
		for from, to := range ports {
			text = strings.ReplaceAll(text, from, to)
		}
		first, _, _ := strings.Cut(text, "\n")
		switch {
		case skipRe.MatchString(first):
			continue
		case bgRe.MatchString(first):
			url := bgRe.FindStringSubmatch(first)[1]
			fmt.Fprintf(&s, "# %s:%d, in the background\n(\n%s) >\"$DOCS_TMP/bg-%d.log\" 2>&1 &\nready %q || { cat \"$DOCS_TMP/bg-%d.log\" >&2; exit 1; }\n", filepath.Base(path), b.line, text, n, url, n)
			n++
		case otherRe.MatchString(first):
			t.Fatalf("%s:%d: unknown marker %q", path, b.line, first)
		default:
			fmt.Fprintf(&s, "# %s:%d\n%s", filepath.Base(path), b.line, text)
		}
	}
	return s.String()
}

// freePorts returns n distinct free loopback ports.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		out = append(out, p)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// runPage runs a page's script in dir with env; the script's processes
// (the background ones too) are stopped when it ends. Bounded by timeout.
func runPage(t *testing.T, root, page, tmp string, ports map[string]string, env []string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script(t, filepath.Join(root, "docs", page), ports))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), append(env, "DOCS_TMP="+tmp)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Start()
	if err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	// The background processes of the page: stopped, then killed.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	faulttest.WaitForOr(20*time.Second, func() bool { return syscall.Kill(-cmd.Process.Pid, 0) != nil })
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil {
		logs, _ := filepath.Glob(filepath.Join(tmp, "bg-*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			t.Logf("%s:\n%s", filepath.Base(l), b)
		}
		t.Fatalf("docs/%s: %v\n%s", page, err, out.String())
	}
	t.Logf("docs/%s:\n%s", page, out.String())
}

// build installs the commands into a fresh bin directory.
func build(t *testing.T, root, bin string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./cmd/routingservice", "./cmd/routingclient")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
}

// The sh blocks of docs/quickstart.md run, in order, on a fresh build:
// `go install ./cmd/...` into a bin directory of the test's, the service
// in the background on free ports (a config file named by ROUTING_CONFIG
// gives it those ports, and its data dir beside it), and every command
// after it against that service.
func TestQuickstartCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service (-short)")
	}
	root := repoRoot(t)
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	p := freePorts(t, 3)
	ports := map[string]string{"127.0.0.1:8082": "127.0.0.1:" + p[0], "127.0.0.1:8085": "127.0.0.1:" + p[1], "127.0.0.1:9090": "127.0.0.1:" + p[2]}
	conf := filepath.Join(tmp, "conf", "config.yaml")
	if err := os.MkdirAll(filepath.Dir(conf), 0o700); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf("api: {listen: \"127.0.0.1:%s\"}\nrealtime: {listen: \"127.0.0.1:%s\"}\nops: {listen: \"127.0.0.1:%s\"}\n", p[0], p[1], p[2])
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"GOBIN=" + bin, "PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + filepath.Join(tmp, "home"), "XDG_DATA_HOME=", "ROUTING_CONFIG=" + conf, "ROUTING_DATA_DIR=", "JWT_SECRET=",
		"ROUTING_API_URL=http://127.0.0.1:" + p[0], "ROUTING_WS_URL=ws://127.0.0.1:" + p[1], "ROUTING_TOKEN=",
		"GOPATH=" + goEnv(t, "GOPATH"), "GOCACHE=" + goEnv(t, "GOCACHE"), "GOMODCACHE=" + goEnv(t, "GOMODCACHE"),
	}
	runPage(t, root, "quickstart.md", tmp, ports, env, 5*time.Minute)
	if _, err := os.Stat(filepath.Join(filepath.Dir(conf), "data", "jwt_secret")); err != nil {
		t.Errorf("the service kept no secret beside its config file: %v", err)
	}
}

// goEnv is `go env NAME`, so that a test HOME keeps the caches.
func goEnv(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// The sh blocks of docs/local-cluster.md run, in order, on a fresh build
// against the shared NATS, PostgreSQL and Redis named by the
// ROUTING_TEST_* variables, on free ports and a prefix of the test's own;
// whatever the run leaves there is removed (the page ends with clean, and
// the test cleans again when it fails).
func TestLocalClusterCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two instances (-short)")
	}
	need := map[string]string{}
	for _, v := range []string{"ROUTING_TEST_NATS_URL", "ROUTING_TEST_POSTGRES_URL", "ROUTING_TEST_REDIS_ADDR"} {
		if need[v] = os.Getenv(v); need[v] == "" {
			t.Skipf("%s is not set; set ROUTING_TEST_NATS_URL, ROUTING_TEST_POSTGRES_URL and ROUTING_TEST_REDIS_ADDR to the shared servers to run the local cluster's page", v)
		}
	}
	root := repoRoot(t)
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	build(t, root, bin)
	p := freePorts(t, 6)
	ports := map[string]string{}
	for i, doc := range []string{"18082", "18085", "19090", "28082", "28085", "29090"} {
		ports["127.0.0.1:"+doc] = "127.0.0.1:" + p[i]
	}
	prefix := fmt.Sprintf("docs%d", os.Getpid())
	env := []string{
		"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + filepath.Join(tmp, "home"), "XDG_STATE_HOME=", "XDG_DATA_HOME=", "ROUTING_CONFIG=" + filepath.Join(tmp, "none.yaml"),
		"NATS_URL=" + need["ROUTING_TEST_NATS_URL"], "DATABASE_URL=" + need["ROUTING_TEST_POSTGRES_URL"], "REDIS_ADDR=" + need["ROUTING_TEST_REDIS_ADDR"],
		"ROUTING_CLUSTER_PREFIX=" + prefix, "ROUTING_CLUSTER_DIR=" + filepath.Join(tmp, "cluster"), "ROUTING_CLUSTER_PORTS=" + strings.Join(p, " "),
		"GOPATH=" + goEnv(t, "GOPATH"), "GOCACHE=" + goEnv(t, "GOCACHE"), "GOMODCACHE=" + goEnv(t, "GOMODCACHE"),
	}
	if err := os.WriteFile(filepath.Join(tmp, "none.yaml"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Idempotent: stops what still runs and removes the prefix's
		// objects, should the page have failed before its clean.
		cmd := exec.Command(filepath.Join(root, "deploy", "local", "cluster.sh"), "clean")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("cluster.sh clean: %v\n%s", err, out)
		}
	})
	runPage(t, root, "local-cluster.md", tmp, ports, env, 5*time.Minute)
}
