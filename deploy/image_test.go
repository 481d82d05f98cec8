package deploy

import (
	"bufio"
	"debug/elf"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/config"
)

const repoRoot = ".."

// buildStage returns the Dockerfile's stage that runs `go build`, and that
// instruction.
func buildStage(t *testing.T, stages []stage) (stage, instruction) {
	t.Helper()
	for _, s := range stages {
		for _, in := range s.instrs {
			if in.cmd == "RUN" && strings.HasPrefix(in.args, "go build") {
				return s, in
			}
		}
	}
	t.Fatal("Dockerfile: no RUN go build")
	return stage{}, instruction{}
}

// dockerBuild returns the environment and the command line of the
// Dockerfile's go build, with the build arguments given.
func dockerBuild(t *testing.T, s stage, run instruction, buildArgs map[string]string) (env, args []string) {
	t.Helper()
	vars := map[string]string{}
	for _, in := range s.instrs {
		switch in.cmd {
		case "ARG":
			name, def, _ := strings.Cut(in.args, "=")
			if v, ok := buildArgs[name]; ok {
				vars[name] = v
			} else {
				vars[name] = strings.Trim(def, `"`)
			}
		case "ENV":
			for _, kv := range shellWords(t, in.args, vars) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Fatalf("Dockerfile: ENV %q: use the KEY=value form", in.args)
				}
				vars[k] = v
				env = append(env, k+"="+v)
			}
		}
	}
	return env, shellWords(t, run.args, vars)
}

// The image's binary, built exactly as the Dockerfile builds it, is static
// (it runs on distroless/static or scratch), reports the version and commit
// given as build arguments, and serves.
func TestImageBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the service binary")
	}
	stages := parseDockerfile(t, filepath.Join(repoRoot, "Dockerfile"))
	bs, run := buildStage(t, stages)
	checkBuilderGo(t, bs)
	env, args := dockerBuild(t, bs, run, map[string]string{"VERSION": "9.8.7-test", "COMMIT": "feedc0de"})
	if !slices.Contains(env, "CGO_ENABLED=0") {
		t.Fatalf("the build stage must set CGO_ENABLED=0, has %q", env)
	}
	out := -1
	for i, a := range args {
		if a == "-o" && i+1 < len(args) {
			out = i + 1
		}
	}
	if out < 0 {
		t.Fatalf("go build without -o: %q", args)
	}
	imagePath := args[out]
	bin := filepath.Join(t.TempDir(), "routingservice")
	args[out] = bin
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // the build dies with the test
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, b)
	}

	checkStatic(t, bin)

	want := fmt.Sprintf("routingservice 9.8.7-test (commit feedc0de, %s)\n", runtime.Version())
	for _, flag := range []string{"version", "--version"} {
		b, err := exec.Command(bin, flag).Output()
		if err != nil {
			t.Fatalf("%s %s: %v", bin, flag, err)
		}
		if string(b) != want {
			t.Fatalf("%s printed %q, want %q", flag, b, want)
		}
	}

	checkRuntimeStage(t, stages[len(stages)-1], bs, imagePath)
	checkServes(t, bin)
}

// checkBuilderGo: the builder image's Go is the go.mod's.
func checkBuilderGo(t *testing.T, bs stage) {
	t.Helper()
	mod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var goVersion string
	for _, l := range strings.Split(string(mod), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			goVersion = strings.TrimSpace(v)
		}
	}
	if !strings.HasPrefix(bs.from, "golang:"+goVersion+"-") && bs.from != "golang:"+goVersion {
		t.Fatalf("build stage FROM %s; go.mod says go %s", bs.from, goVersion)
	}
}

// checkStatic: no program interpreter and no shared libraries.
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("binary has a %v program header: it is not static", p.Type)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) > 0 {
		t.Fatalf("binary needs shared libraries %v", libs)
	}
}

// checkRuntimeStage: the image runs the built binary, as a non-root user,
// serve by default, keeps its data in the /data volume and declares the
// listeners' ports.
func checkRuntimeStage(t *testing.T, rs, bs stage, imagePath string) {
	t.Helper()
	if !strings.HasPrefix(rs.from, "gcr.io/distroless/static") && rs.from != "scratch" {
		t.Errorf("runtime stage FROM %s: want distroless/static (or scratch with CA certificates)", rs.from)
	}
	got := map[string][]string{}
	for _, in := range rs.instrs {
		got[in.cmd] = append(got[in.cmd], in.args)
	}
	var binPath string
	for _, c := range got["COPY"] {
		f := strings.Fields(c)
		if slices.Contains(f, "--from="+bs.name) && f[len(f)-2] == imagePath {
			binPath = f[len(f)-1]
		}
	}
	if binPath == "" {
		t.Errorf("runtime stage does not copy %s from the %s stage", imagePath, bs.name)
	}
	if ep := got["ENTRYPOINT"]; len(ep) != 1 || ep[0] != fmt.Sprintf("[%q]", binPath) {
		t.Errorf("ENTRYPOINT %q, want [%q]", ep, binPath)
	}
	if c := got["CMD"]; len(c) != 1 || c[0] != `["serve"]` {
		t.Errorf(`CMD %q, want ["serve"]`, c)
	}
	if u := got["USER"]; len(u) != 1 || u[0] == "root" || strings.HasPrefix(u[0], "0") {
		t.Errorf("USER %q: the image must run as a non-root user", u)
	}
	if v := got["VOLUME"]; len(v) != 1 || v[0] != `["/data"]` {
		t.Errorf(`VOLUME %q, want ["/data"]`, v)
	}
	if !slices.Contains(got["ENV"], "ROUTING_DATA_DIR=/data") {
		t.Errorf("ENV %q: want ROUTING_DATA_DIR=/data", got["ENV"])
	}
	// The ports the image's configuration listens on.
	raw, err := os.ReadFile(imageConfigFile(t))
	if err != nil {
		t.Fatal(err)
	}
	ic := config.Default()
	if err := config.Parse(raw, &ic); err != nil {
		t.Fatal(err)
	}
	var ports []string
	for _, l := range []string{ic.API.Listen, ic.Realtime.Listen, ic.Ops.Listen} {
		_, port, err := net.SplitHostPort(l)
		if err != nil {
			t.Fatalf("the image's listen address %q: %v", l, err)
		}
		ports = append(ports, port)
	}
	if e := got["EXPOSE"]; len(e) != 1 || e[0] != strings.Join(ports, " ") {
		t.Errorf("EXPOSE %q, want %q (api, websocket, operations)", e, strings.Join(ports, " "))
	}
}

// checkServes runs `serve` on a fresh data dir until it logs that it is
// serving, then stops it with SIGTERM and expects a clean exit.
func checkServes(t *testing.T, bin string) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	body := `api: {listen: "127.0.0.1:0"}
realtime: {listen: "127.0.0.1:0"}
ops: {listen: "127.0.0.1:0"}
admin: {socket: "-"}
`
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), "ROUTING_DATA_DIR="+filepath.Join(dir, "data"), "JWT_SECRET=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	serving, eof := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(eof)
		found := false
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Log("serve:", sc.Text())
			if !found && strings.Contains(sc.Text(), "msg=serving") {
				found = true
				close(serving)
			}
		}
	}()
	select {
	case <-serving:
	case <-eof:
		t.Fatalf("serve exited before serving: %v", cmd.Wait())
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not log that it is serving within 60s")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-eof:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit within 30s of SIGTERM")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v", err)
	}
}
