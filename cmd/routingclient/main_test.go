package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/testkit"
	"github.com/go-routing-service/routingservice/pkg/client"
)

type service struct {
	api, ws string
	tok     func(sub string) string
}

func startService(t *testing.T, ctx context.Context) service {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.API.Listen, cfg.Realtime.Listen, cfg.Ops.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Push.WebPush.Enabled = false
	cfg.JWTSecret = "client-test-secret-0123456789-0123456789"
	cfg.FillDefaults()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	a, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	t.Cleanup(func() { stop(); <-done })
	return service{
		api: "http://" + a.APIAddr(),
		ws:  "ws://" + a.WSAddr(),
		tok: func(sub string) string {
			s, err := auth.Sign([]byte(cfg.JWTSecret), sub, time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
}

// send and listen work against a running service: what one sends the other
// prints, and listen says on stderr when it is connected.
func TestSendAndListen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := startService(t, ctx)

	var sendOut strings.Builder
	if err := run(ctx, []string{"send", "--api", svc.api, "--token", svc.tok("urn:sm:user:alice"), "--to", "urn:sm:user:bob", "--text", "hello"}, &sendOut, io.Discard); err != nil {
		t.Fatal(err)
	}
	var acc client.Accepted
	if err := json.Unmarshal([]byte(sendOut.String()), &acc); err != nil || acc.ID == "" {
		t.Fatalf("send printed %q: %v", sendOut.String(), err)
	}
	pr, pw := io.Pipe()
	var stderr testkit.Buffer
	lctx, lcancel := context.WithCancel(ctx)
	ldone := make(chan error, 1)
	go func() {
		ldone <- run(lctx, []string{"listen", "--ws", svc.ws, "--token", svc.tok("urn:sm:user:bob")}, pw, &stderr)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	lcancel()
	<-ldone
	var env client.Envelope
	if err := json.Unmarshal([]byte(line), &env); err != nil || env.ID != acc.ID || string(env.Payload) != "hello" {
		t.Fatalf("listen printed %q: %v", line, err)
	}
	if want := "routingclient: connected to " + svc.ws + "\n"; !strings.Contains(stderr.String(), want) {
		t.Fatalf("listen's stderr %q lacks %q", stderr.String(), want)
	}
}

// ack removes a fetched message from the caller's queue.
func TestFetchAndAck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := startService(t, ctx)
	bob := svc.tok("urn:sm:user:bob")

	var sendOut strings.Builder
	if err := run(ctx, []string{"send", "--api", svc.api, "--token", svc.tok("urn:sm:user:alice"), "--to", "urn:sm:user:bob", "--text", "hi"}, &sendOut, io.Discard); err != nil {
		t.Fatal(err)
	}
	var acc client.Accepted
	if err := json.Unmarshal([]byte(sendOut.String()), &acc); err != nil {
		t.Fatal(err)
	}
	fetch := func() client.Page {
		t.Helper()
		var out strings.Builder
		if err := run(ctx, []string{"fetch", "--api", svc.api, "--token", bob}, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		var p client.Page
		if err := json.Unmarshal([]byte(out.String()), &p); err != nil {
			t.Fatalf("fetch printed %q: %v", out.String(), err)
		}
		return p
	}
	// The message is stored asynchronously after it is accepted.
	deadline := time.Now().Add(10 * time.Second)
	for p := fetch(); len(p.Messages) == 0; p = fetch() {
		if time.Now().After(deadline) {
			t.Fatal("the sent message never became pending")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p := fetch(); len(p.Messages) != 1 || p.Messages[0].ID != acc.ID {
		t.Fatalf("fetch: %+v, want the one message %s", p, acc.ID)
	}
	if err := run(ctx, []string{"ack", "--api", svc.api, "--token", bob, acc.ID}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if p := fetch(); len(p.Messages) != 0 {
		t.Fatalf("after ack, fetch still returns %+v", p)
	}
	if err := run(ctx, []string{"ack", "--api", svc.api, "--token", bob}, io.Discard, io.Discard); err == nil {
		t.Fatal("ack without ids succeeded")
	}
}

// Every command's -h lists its own flags only and succeeds.
func TestCommandHelp(t *testing.T) {
	cases := map[string]struct{ has, hasNot []string }{
		"listen": {[]string{"-ws", "-no-ack", "-token"}, []string{"-api", "-to", "-text"}},
		"send":   {[]string{"-api", "-to", "-text", "-type", "-token"}, []string{"-ws", "-no-ack", "-limit"}},
		"fetch":  {[]string{"-api", "-after", "-limit", "-token"}, []string{"-ws", "-to", "-no-ack"}},
		"ack":    {[]string{"-api", "-token"}, []string{"-ws", "-to", "-limit", "-no-ack"}},
	}
	for cmd, c := range cases {
		var out, errOut strings.Builder
		if err := run(context.Background(), []string{cmd, "-h"}, &out, &errOut); err != nil {
			t.Fatalf("%s -h: %v", cmd, err)
		}
		help := out.String() + errOut.String()
		if !strings.Contains(help, "usage: routingclient "+cmd) {
			t.Fatalf("%s -h printed %q", cmd, help)
		}
		for _, f := range c.has {
			if !strings.Contains(help, "  "+f+" ") && !strings.Contains(help, "  "+f+"\n") {
				t.Errorf("%s -h lacks %s: %q", cmd, f, help)
			}
		}
		for _, f := range c.hasNot {
			if strings.Contains(help, "  "+f+" ") || strings.Contains(help, "  "+f+"\n") {
				t.Errorf("%s -h lists %s: %q", cmd, f, help)
			}
		}
	}
	var out strings.Builder
	if err := run(context.Background(), []string{"-h"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "ack") {
		t.Fatalf("-h: %v, %q", err, out.String())
	}
}

// A refused token is reported once, for HTTP and WebSocket commands alike.
func TestRefusedTokenSaidOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := startService(t, ctx)
	for _, args := range [][]string{
		{"fetch", "--api", svc.api, "--token", "not-a-jwt"},
		{"listen", "--ws", svc.ws, "--token", "not-a-jwt"},
	} {
		err := run(ctx, args, io.Discard, io.Discard)
		if err == nil || strings.Count(err.Error(), "invalid token") != 1 || strings.Count(err.Error(), "routing service") != 1 {
			t.Fatalf("%s with a bad token: %v", args[0], err)
		}
	}
}

func TestRecipientURN(t *testing.T) {
	for in, want := range map[string]string{
		"bob":                 "urn:sm:user:bob",
		" bob ":               "urn:sm:user:bob",
		"urn:sm:user:bob":     "urn:sm:user:bob",
		"urn:acme:device:b-1": "urn:acme:device:b-1",
	} {
		if got := recipientURN(in); got != want {
			t.Errorf("recipientURN(%q) = %q, want %q", in, got, want)
		}
	}
}

// listen --count N exits by itself after printing N messages.
func TestListenCount(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := startService(t, ctx)
	alice, bob := svc.tok("urn:sm:user:alice"), svc.tok("urn:sm:user:bob")
	for _, text := range []string{"one", "two", "three"} {
		if err := run(ctx, []string{"send", "--api", svc.api, "--token", alice, "--to", "bob", "--text", text}, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
	}
	var out strings.Builder
	if err := run(ctx, []string{"listen", "--ws", svc.ws, "--token", bob, "--count", "2"}, &out, io.Discard); err != nil {
		t.Fatalf("listen --count 2: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("listen --count 2 printed %d lines: %q", len(lines), out.String())
	}
	for i, want := range []string{"one", "two"} {
		var env client.Envelope
		if err := json.Unmarshal([]byte(lines[i]), &env); err != nil || string(env.Payload) != want {
			t.Fatalf("line %d: %q (%v), want the message %q", i, lines[i], err, want)
		}
	}
}

// --api and --ws default to $ROUTING_API_URL and $ROUTING_WS_URL.
func TestAddressesFromTheEnvironment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := startService(t, ctx)
	t.Setenv("ROUTING_API_URL", svc.api)
	t.Setenv("ROUTING_WS_URL", svc.ws)
	if err := run(ctx, []string{"send", "--token", svc.tok("urn:sm:user:alice"), "--to", "bob", "--text", "env"}, io.Discard, io.Discard); err != nil {
		t.Fatalf("send without --api: %v", err)
	}
	var out strings.Builder
	if err := run(ctx, []string{"listen", "--token", svc.tok("urn:sm:user:bob"), "--count", "1"}, &out, io.Discard); err != nil {
		t.Fatalf("listen without --ws: %v", err)
	}
	if !strings.Contains(out.String(), `"payload":"ZW52"`) {
		t.Fatalf("listen printed %q, want the message sent", out.String())
	}
}
