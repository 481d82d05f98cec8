package app

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/config"
)

// The delivery topic janitor finds a realtime instance present through
// the marker the realtime role keeps in presence, and an instance that
// runs nowhere absent.
func TestInstancePresenceSeesRealtimeInstances(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.InstanceID = "rt-janitor-test"
	cfg.API.Listen = "127.0.0.1:0"
	cfg.Realtime.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = "127.0.0.1:0"
	cfg.Push.WebPush.Enabled = false
	cfg.JWTSecret = "test-secret-0123456789-0123456789-abcdef"
	cfg.FillDefaults()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	ip := instancePresence{a.presence}
	want := []bool{true, false}
	var got []bool
	deadline := time.Now().Add(15 * time.Second)
	for !slices.Equal(got, want) {
		if time.Now().After(deadline) {
			t.Fatalf("Present(%s, rt-nowhere) = %v, want %v", cfg.InstanceID, got, want)
		}
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		got, err = ip.Present(pctx, []string{cfg.InstanceID, "rt-nowhere"})
		pcancel()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
		}
	}
}
