package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/version"
)

func TestVersionCommand(t *testing.T) {
	want := version.Get().String() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out strings.Builder
		if err := run(args, &out, io.Discard); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if out.String() != want {
			t.Fatalf("%v printed %q, want %q", args, out.String(), want)
		}
	}
}

// In production mode `token --allow-production` signs with JWT_SECRET and
// warns; without the flag it refuses.
func TestTokenAllowProduction(t *testing.T) {
	secret := strings.Repeat("s", 40)
	t.Setenv("JWT_SECRET", secret)
	prod := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(prod, []byte("run_mode: production\nsingle_node: true\ndata_dir: "+q(t.TempDir())+"\npush: {webpush: {enabled: false}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"token", "--config", prod, "--sub", "urn:sm:user:alice"}, io.Discard, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "--allow-production") {
		t.Fatalf("token in production without --allow-production: %v", err)
	}
	var out, errOut strings.Builder
	if err := run([]string{"token", "--config", prod, "--allow-production", "--sub", "urn:sm:user:alice"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "warning") {
		t.Fatalf("no warning on stderr: %q", errOut.String())
	}
	v, err := auth.NewVerifier(context.Background(), auth.Options{Config: auth.Config{Algorithms: []string{"HS256"}}, HS256Secret: []byte(secret)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if c, err := v.Verify(strings.TrimSpace(out.String())); err != nil || c.Subject != "urn:sm:user:alice" {
		t.Fatalf("token not accepted with JWT_SECRET: %v", err)
	}
}

// Every command's -h prints its synopsis and its own flags only, and succeeds.
func TestCommandHelp(t *testing.T) {
	cases := []struct {
		args        []string
		has, hasNot []string
	}{
		{[]string{"serve", "-h"}, []string{"usage: routingservice serve", "  -config "}, []string{"-sub", "-ttl", "-limit"}},
		{[]string{"token", "-h"}, []string{"usage: routingservice token", "  -sub ", "  -ttl ", "  -allow-production", "  -config "}, []string{"-limit", "-json"}},
		{[]string{"config", "check", "-h"}, []string{"usage: routingservice config check", "  -config ", "  -connect", "  -timeout "}, []string{"-sub", "-limit"}},
		{[]string{"config", "-h"}, []string{"usage: routingservice config check"}, []string{"-sub"}},
		{[]string{"vapid", "-h"}, []string{"usage: routingservice vapid"}, []string{"-config", "-sub"}},
		{[]string{"version", "-h"}, []string{"usage: routingservice version"}, []string{"-config", "-sub"}},
		{[]string{"dlq", "list", "-h"}, []string{"usage: routingservice dlq", "--limit", "--all"}, []string{"-sub", "-ttl"}},
		{[]string{"dlq", "-h"}, []string{"usage: routingservice dlq"}, []string{"-sub", "-ttl"}},
	}
	for _, c := range cases {
		var out, errOut strings.Builder
		if err := run(c.args, &out, &errOut); err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if out.Len() != 0 {
			t.Errorf("%v wrote to stdout: %q", c.args, out.String())
		}
		help := errOut.String()
		for _, s := range c.has {
			if !strings.Contains(help, s) {
				t.Errorf("%v: help lacks %q: %q", c.args, s, help)
			}
		}
		for _, s := range c.hasNot {
			if strings.Contains(help, s) {
				t.Errorf("%v: help has %q: %q", c.args, s, help)
			}
		}
	}
}

// token and dlq check only the keys they use: the production example, which
// names PostgreSQL, Redis and Pub/Sub, works for them without DATABASE_URL or
// REDIS_PASSWORD, which serve requires.
func TestToolsNeedNoBackendSecrets(t *testing.T) {
	t.Setenv("JWT_SECRET", strings.Repeat("p", 40))
	t.Setenv("DATABASE_URL", "")
	t.Setenv("REDIS_PASSWORD", "")
	t.Setenv("ROUTING_DATA_DIR", t.TempDir())
	prod := filepath.Join("..", "..", "config", "production.yaml")
	if _, err := config.Load(prod); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Fatalf("loading the production example for serve without DATABASE_URL: %v", err)
	}
	var out strings.Builder
	if err := run([]string{"token", "--config", prod, "--allow-production", "--sub", "urn:sm:user:alice"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), ".") != 2 {
		t.Fatalf("token printed %q", out.String())
	}
	// No service runs: dlq gets past the configuration to the admin socket.
	err := run([]string{"dlq", "list", "ingress", "--config", prod}, io.Discard, io.Discard)
	if err == nil || strings.Contains(err.Error(), "config key") {
		t.Fatalf("dlq list with the production example: %v", err)
	}
	// The keys they use are still checked.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("run_mode: prod\nstore: {type: postgres}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"token", "--sub", "urn:sm:user:alice"}, {"dlq", "list", "ingress"}} {
		err := run(append(args, "--config", bad), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "config key run_mode") || strings.Contains(err.Error(), "DATABASE_URL") {
			t.Fatalf("%v with a bad run_mode: %v", args, err)
		}
	}
}
