package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/config"
)

// target is the service under load.
type target struct {
	api, ws string
	secret  string
	pid     int                                       // the server's process, when known (-pid, child)
	scrape  func(ctx context.Context) (string, error) // Prometheus text; nil: none
	// metricsURL is the server's /metrics on its operations listener,
	// when routebench started it.
	metricsURL string
	close      func()
	floor      *floorServer // the floor scenario's server, else nil
}

func newTarget(o options) (target, error) {
	var t target
	var err error
	switch {
	case o.scenario == "floor":
		return startFloor(o)
	case o.embedded:
		t, err = startChild(o)
	default:
		t = target{api: o.api, ws: o.ws, secret: os.Getenv("JWT_SECRET"), close: func() {}}
		if t.secret == "" {
			t.secret, err = localSecret(o.config)
		}
	}
	if err != nil {
		return t, err
	}
	if o.pid != 0 {
		t.pid = o.pid
	}
	if o.metrics != "" {
		u := o.metrics
		t.scrape = func(ctx context.Context) (string, error) { return scrapeURL(ctx, u) }
	}
	return t, nil
}

// startInProcess starts an embedded instance in this process on a temporary
// data dir, listening on loopback ports of its own, with the rate limit off.
func startInProcess(configPath string) (target, error) {
	cfg, err := config.Load(configPath)
	if err != nil {
		return target{}, err
	}
	dir, err := os.MkdirTemp("", "routebench-")
	if err != nil {
		return target{}, err
	}
	cfg.DataDir = dir
	cfg.Store.SQLite.Path = dir + "/routing.db"
	cfg.API.Listen, cfg.Realtime.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Push.WebPush.Enabled = false
	cfg.Ops.Listen = "127.0.0.1:0"
	// The senders and connections are load, not abuse: no rate limits, no
	// caps on connections from one address (all are from loopback).
	cfg.API.RateLimit = 0
	cfg.Realtime.MaxConns, cfg.Realtime.MaxConnsPerIP = 1<<30, 0
	cfg.Realtime.ConnectRatePerIP, cfg.Realtime.ConnectRatePerUser = 0, 0
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		cancel()
		os.RemoveAll(dir)
		return target{}, err
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	metricsURL := "http://" + a.OpsAddr() + "/metrics"
	return target{
		api: "http://" + a.APIAddr(), ws: "ws://" + a.WSAddr(), secret: cfg.JWTSecret, pid: os.Getpid(),
		scrape:     func(ctx context.Context) (string, error) { return scrapeURL(ctx, metricsURL) },
		metricsURL: metricsURL,
		close: func() {
			cancel()
			if err := <-done; err != nil {
				fmt.Fprintln(os.Stderr, "routebench: embedded instance:", err)
			}
			os.RemoveAll(dir)
		},
	}, nil
}

// runServer is the "server" scenario: an embedded instance in this process
// until stdin closes, SIGINT/SIGTERM or -duration. Its first line on stdout
// gives its addresses and pid.
func runServer(o options) error {
	t, err := startInProcess(o.config)
	if err != nil {
		return err
	}
	defer t.close()
	fmt.Printf("api=%s ws=%s metrics=%s pid=%d\n", t.api, t.ws, t.metricsURL, os.Getpid())
	stdinClosed := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case <-stdinClosed:
	case <-sig:
	case <-time.After(o.duration):
	}
	return nil
}

// startChild starts "routebench server" as a child process with a fresh
// secret and returns it as the target; closing its stdin stops it.
func startChild(o options) (target, error) {
	exe, err := os.Executable()
	if err != nil {
		return target{}, err
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	secret := hex.EncodeToString(b)
	args := []string{"server", "-duration", (o.duration + o.drain + 5*time.Minute).String()}
	if o.config != "" {
		args = append(args, "-config", o.config)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "JWT_SECRET="+secret)
	cmd.Stderr = os.Stderr
	// Its own process group: a ^C reaches routebench alone, which then
	// closes the child's stdin once it has finished with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return target{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return target{}, err
	}
	if err := cmd.Start(); err != nil {
		return target{}, err
	}
	waited := make(chan error, 1)
	stopChild := func() {
		stdin.Close()
		select {
		case <-waited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-waited
		}
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
		waited <- cmd.Wait()
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(60 * time.Second):
	}
	t := target{secret: secret, pid: cmd.Process.Pid, close: stopChild}
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "api":
			t.api = v
		case "ws":
			t.ws = v
		case "metrics":
			u := v
			t.metricsURL = u
			t.scrape = func(ctx context.Context) (string, error) { return scrapeURL(ctx, u) }
		}
	}
	if t.api == "" || t.ws == "" {
		stopChild()
		return target{}, fmt.Errorf("embedded server process did not start (its first line: %q)", line)
	}
	return t, nil
}

// procRSS reads VmRSS of a process from /proc.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// localSecret reads the secret a local server generated into its data dir
// (data_dir of the config file, or ROUTING_DATA_DIR), as `routingservice
// token` does.
func localSecret(configPath string) (string, error) {
	cfg := config.Default()
	if configPath != "" {
		b, err := os.ReadFile(configPath)
		if err != nil {
			return "", err
		}
		if err := config.Parse(b, &cfg); err != nil {
			return "", fmt.Errorf("%s: %w", configPath, err)
		}
	}
	cfg.FromEnv(os.Getenv)
	s, err := config.ExistingLocalSecret(cfg.DataDir)
	if err != nil {
		return "", fmt.Errorf("JWT_SECRET is unset and the server's generated secret is not readable (give -config or ROUTING_DATA_DIR): %w", err)
	}
	return s, nil
}
