package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/admin"
	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/config"
)

// dlqApp runs the service in this process on the embedded default, with a
// config file naming its data dir (and so its admin socket) for the dlq
// commands. It returns the app and the --config argument.
func dlqApp(t *testing.T) (*app.App, string) {
	t.Helper()
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config.yaml")
	yaml := "data_dir: " + filepath.Join(dir, "data") + "\napi: {listen: \"127.0.0.1:0\"}\nrealtime: {listen: \"127.0.0.1:0\"}\nops: {listen: \"127.0.0.1:0\"}\n" +
		"push: {webpush: {enabled: false}}\nbus: {min_backoff: 50ms, max_backoff: 200ms}\n"
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return a, cfgFile
}

// runDLQ runs `routingservice dlq args...` and returns its stdout and stderr.
func runDLQ(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(append([]string{"dlq"}, args...), &out, &errOut)
	return out.String(), errOut.String(), err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDLQCommands(t *testing.T) {
	a, cfg := dlqApp(t)
	ctx := context.Background()
	const secret = "SECRET-PAYLOAD-BYTES"
	for _, id := range []string{"poison-a", "poison-b", "poison-c"} {
		if err := a.Bus().PublishIngress(ctx, &bus.Message{ID: id, Data: []byte(secret), Attributes: map[string]string{"origin": "test"}}); err != nil {
			t.Fatal(err)
		}
	}
	dead := a.Metrics().DeadLettered.WithLabelValues(bus.QueueIngress)
	waitFor(t, "3 dead letters", func() bool { return testutil.ToFloat64(dead) == 3 })

	// list: a table, and JSON.
	out, _, err := runDLQ(t, "list", "ingress", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "ID") || !strings.Contains(lines[0], "MESSAGE ID") ||
		!strings.Contains(lines[0], "ATTEMPTS") || !strings.Contains(lines[0], "AGE") || !strings.Contains(lines[0], "REASON") {
		t.Fatalf("list table:\n%s", out)
	}
	rows := map[string]bool{}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) >= 5 && f[2] == "1" {
			rows[f[1]] = true
		}
	}
	if !rows["poison-a"] || !rows["poison-b"] || !rows["poison-c"] {
		t.Fatalf("list rows:\n%s", out)
	}
	out, _, err = runDLQ(t, "--config", cfg, "list", "ingress", "--limit", "2", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var msgs []admin.DeadMessage
	if err := json.Unmarshal([]byte(out), &msgs); err != nil || len(msgs) != 2 {
		t.Fatalf("list --limit 2 --json: %v\n%s", err, out)
	}
	out, _, err = runDLQ(t, "list", "ingress", "--json", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	msgs = nil
	if err := json.Unmarshal([]byte(out), &msgs); err != nil || len(msgs) != 3 {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	// Handlers run concurrently: the dead-letter order is not the publish order.
	slices.SortFunc(msgs, func(a, b admin.DeadMessage) int { return strings.Compare(a.MessageID, b.MessageID) })
	if out, _, err := runDLQ(t, "list", "delivery", "--config", cfg); err != nil || !strings.Contains(out, "no dead messages") {
		t.Fatalf("empty delivery queue: %v\n%s", err, out)
	}

	// show: attributes, reason and size, never the payload.
	out, _, err = runDLQ(t, "show", "ingress", msgs[1].ID, "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"poison-b", "reason:", "attempts:", "dead at:", "origin: test", "20 bytes (not shown)"} {
		if !strings.Contains(out, want) {
			t.Fatalf("show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, secret) {
		t.Fatalf("show printed the payload:\n%s", out)
	}
	if _, _, err := runDLQ(t, "show", "ingress", "424242", "--config", cfg); err == nil || !strings.Contains(err.Error(), "no dead message") {
		t.Fatalf("show of an unknown id: %v", err)
	}

	// replay: needs ids or --all; the poison message comes straight back.
	if _, _, err := runDLQ(t, "replay", "ingress", "--config", cfg); err == nil || !strings.Contains(err.Error(), "--all") {
		t.Fatalf("replay without ids: %v", err)
	}
	out, _, err = runDLQ(t, "replay", "ingress", msgs[0].ID, "--config", cfg)
	if err != nil || !strings.Contains(out, "replayed 1 message") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	waitFor(t, "the replayed message dead-lettered again", func() bool { return testutil.ToFloat64(dead) == 4 })
	if v := testutil.ToFloat64(a.Metrics().DeadReplayed.WithLabelValues(bus.QueueIngress)); v != 1 {
		t.Fatalf("replayed counter %v", v)
	}

	// purge: asks on a terminal, refuses without one.
	oldIn, oldTerm := dlqStdin, dlqIsTerminal
	t.Cleanup(func() { dlqStdin, dlqIsTerminal = oldIn, oldTerm })
	dlqStdin = strings.NewReader("yes\n")
	if _, _, err := runDLQ(t, "purge", "ingress", msgs[1].ID, "--config", cfg); err == nil || !strings.Contains(err.Error(), "not a terminal") {
		t.Fatalf("purge without a terminal: %v", err)
	}
	dlqIsTerminal = func(io.Reader) bool { return true }
	dlqStdin = strings.NewReader("no\n")
	if _, errOut, err := runDLQ(t, "purge", "ingress", msgs[1].ID, "--config", cfg); err == nil || !strings.Contains(errOut, "Type yes") {
		t.Fatalf("purge answered no: %v\n%s", err, errOut)
	}
	if m, _, _ := runDLQ(t, "list", "ingress", "--json", "--config", cfg); strings.Count(m, `"message_id"`) != 3 {
		t.Fatalf("a refused purge deleted something:\n%s", m)
	}
	dlqStdin = strings.NewReader("yes\n")
	if out, _, err := runDLQ(t, "purge", "ingress", msgs[1].ID, "--config", cfg); err != nil || !strings.Contains(out, "purged 1 message") {
		t.Fatalf("confirmed purge: %v\n%s", err, out)
	}
	dlqIsTerminal = oldTerm
	if out, _, err := runDLQ(t, "purge", "ingress", "--all", "--yes", "--config", cfg); err != nil || !strings.Contains(out, "purged 2 message") {
		t.Fatalf("purge --all --yes: %v\n%s", err, out)
	}
	if out, _, err := runDLQ(t, "list", "ingress", "--config", cfg); err != nil || !strings.Contains(out, "no dead messages") {
		t.Fatalf("after purge: %v\n%s", err, out)
	}
	if v := testutil.ToFloat64(a.Metrics().DeadPurged.WithLabelValues(bus.QueueIngress)); v != 3 {
		t.Fatalf("purged counter %v", v)
	}
}

func TestDLQUsageErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: "+filepath.Join(dir, "data")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"list"}, "name the queue"},
		{[]string{"list", "outbox"}, "unknown queue"},
		{[]string{"list", "ingress", "extra"}, "unexpected arguments"},
		{[]string{"list", "ingress", "--limit", "0"}, "--limit"},
		{[]string{"show", "ingress"}, "one message id"},
		{[]string{"show", "ingress", "--all"}, "--all is for replay and purge"},
		{[]string{"replay", "ingress", "1", "--all"}, "not both"},
		{[]string{"purge", "delivery"}, "--all"},
		{[]string{"frobnicate", "ingress"}, "unknown subcommand"},
		// No service runs on this data dir.
		{[]string{"list", "ingress"}, "no routing service is running"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			_, _, err := runDLQ(t, append(c.args, "--config", cfg)...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	if _, _, err := runDLQ(t); err == nil || !strings.Contains(err.Error(), "no subcommand") {
		t.Fatalf("no subcommand: %v", err)
	}
	off := filepath.Join(dir, "off.yaml")
	if err := os.WriteFile(off, []byte("data_dir: "+filepath.Join(dir, "data")+"\nadmin: {socket: \"-\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runDLQ(t, "list", "ingress", "--config", off); err == nil || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("disabled socket: %v", err)
	}
}
