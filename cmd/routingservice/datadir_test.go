package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/datadir"
)

// A second instance on a data dir in use is refused before it opens
// anything in it: the error names the dir and data_dir, and neither the
// SQLite file nor the embedded bus's directory is made.
func TestServeRefusesADataDirInUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	release, err := datadir.Lock(dir) // the instance already running
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	body := "data_dir: " + dir + "\napi: {listen: " + freePort(t) + "}\nrealtime: {listen: " + freePort(t) +
		"}\nops: {listen: " + freePort(t) + "}\nlog: {level: error}\npush: {webpush: {enabled: false}}\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JWT_SECRET", testSecret)
	var out bytes.Buffer
	err = run([]string{"serve", "--config", cfg}, &out, &out)
	if !errors.Is(err, datadir.ErrInUse) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "data_dir") {
		t.Fatalf("serve on a data dir in use: %v, want an error naming data_dir and %s", err, dir)
	}
	for _, name := range []string{"routing.db", "nats", "admin.sock"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists in the refused instance's data dir (%v)", name, err)
		}
	}
}

// A config file without data_dir keeps the data beside it, whatever the
// working directory, and the running instance holds the dir's lock.
func TestServeKeepsTheDataDirBesideTheConfig(t *testing.T) {
	t.Chdir(t.TempDir())
	c := startChildConfig(t, "")
	want := filepath.Join(filepath.Dir(c.config), "data")
	if _, err := os.Stat(filepath.Join(want, "routing.db")); err != nil {
		t.Fatalf("the store is not in %s: %v", want, err)
	}
	if _, err := os.Stat(filepath.Join(want, datadir.LockFile)); err != nil {
		t.Fatalf("no lock in %s: %v", want, err)
	}
}
