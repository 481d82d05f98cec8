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
	"github.com/go-routing-service/routingservice/pkg/client"
)

// send and listen work against a running service: what one sends the other prints.
func TestSendAndListen(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.API.Listen, cfg.Realtime.Listen, cfg.Ops.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Push.WebPush.Enabled = false
	cfg.JWTSecret = "client-test-secret-0123456789-0123456789"
	cfg.FillDefaults()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() { stop(); <-done }()
	tok := func(sub string) string {
		s, err := auth.Sign([]byte(cfg.JWTSecret), sub, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	api, ws := "http://"+a.APIAddr(), "ws://"+a.WSAddr()

	var sendOut strings.Builder
	if err := run(ctx, []string{"send", "--api", api, "--token", tok("urn:sm:user:alice"), "--to", "urn:sm:user:bob", "--text", "hello"}, &sendOut); err != nil {
		t.Fatal(err)
	}
	var acc client.Accepted
	if err := json.Unmarshal([]byte(sendOut.String()), &acc); err != nil || acc.ID == "" {
		t.Fatalf("send printed %q: %v", sendOut.String(), err)
	}
	pr, pw := io.Pipe()
	lctx, lcancel := context.WithCancel(ctx)
	ldone := make(chan error, 1)
	go func() {
		ldone <- run(lctx, []string{"listen", "--ws", ws, "--token", tok("urn:sm:user:bob")}, pw)
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
}
