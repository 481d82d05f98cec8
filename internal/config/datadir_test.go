package config

import (
	"os"
	"path/filepath"
	"testing"
)

// The data dir does not depend on the working directory: beside the
// config file when there is one (a relative data_dir from the file's
// directory), the per-user directory otherwise; ROUTING_DATA_DIR still
// overrides, taken from the working directory and made absolute.
func TestDataDirDoesNotDependOnTheWorkingDirectory(t *testing.T) {
	home, xdg := t.TempDir(), t.TempDir()
	confDir := filepath.Join(t.TempDir(), "etc")
	if err := os.Mkdir(confDir, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(body string) string {
		p := filepath.Join(confDir, "config.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name      string
		file      string // "" for no config file
		relative  bool   // name the file by a path relative to the working directory
		xdg       string // XDG_DATA_HOME
		routing   string // ROUTING_DATA_DIR
		want      string
		wantInCwd string // want, relative to the working directory
	}{
		{name: "no file: per-user dir under HOME", want: filepath.Join(home, ".local", "share", "routingservice")},
		{name: "no file: XDG_DATA_HOME", xdg: xdg, want: filepath.Join(xdg, "routingservice")},
		{name: "no file: relative XDG_DATA_HOME ignored", xdg: "rel", want: filepath.Join(home, ".local", "share", "routingservice")},
		{name: "file without data_dir: beside it", file: "log: {level: info}\n", want: filepath.Join(confDir, "data")},
		{name: "file named relatively", file: "log: {level: info}\n", relative: true, want: filepath.Join(confDir, "data")},
		{name: "relative data_dir: from the file's directory", file: "data_dir: ./state\n", want: filepath.Join(confDir, "state")},
		{name: "absolute data_dir", file: "data_dir: " + filepath.Join(xdg, "abs") + "\n", want: filepath.Join(xdg, "abs")},
		{name: "ROUTING_DATA_DIR over the file, from the working directory", file: "data_dir: ./state\n", routing: "mine", wantInCwd: "mine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cwd := t.TempDir()
			t.Chdir(cwd)
			t.Setenv("HOME", home)
			t.Setenv("XDG_DATA_HOME", tc.xdg)
			t.Setenv("ROUTING_DATA_DIR", tc.routing)
			t.Setenv("JWT_SECRET", "a-test-secret-0123456789-0123456789")
			path := ""
			if tc.file != "" {
				path = write(tc.file)
				if tc.relative {
					rel, err := filepath.Rel(cwd, path)
					if err != nil {
						t.Fatal(err)
					}
					path = rel
				}
			}
			cfg, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if tc.wantInCwd != "" {
				want = filepath.Join(cwd, tc.wantInCwd)
			}
			if cfg.DataDir != want {
				t.Fatalf("data_dir %q, want %q", cfg.DataDir, want)
			}
			if cfg.Store.SQLite.Path != filepath.Join(want, "routing.db") {
				t.Fatalf("sqlite path %q, want it in %q", cfg.Store.SQLite.Path, want)
			}
			// The same configuration read from another directory finds
			// the same data dir.
			if tc.routing == "" && !tc.relative {
				t.Chdir(t.TempDir())
				again, err := Load(path)
				if err != nil {
					t.Fatal(err)
				}
				if again.DataDir != cfg.DataDir {
					t.Fatalf("from another directory: data_dir %q, first %q", again.DataDir, cfg.DataDir)
				}
			}
		})
	}
}

// Without JWT_SECRET the generated secret lands in the per-user data dir,
// so a token signed from one directory verifies in a service started
// from another.
func TestLocalSecretFollowsTheDataDir(t *testing.T) {
	xdg := t.TempDir()
	t.Setenv("XDG_DATA_HOME", xdg)
	t.Setenv("JWT_SECRET", "")
	t.Setenv("ROUTING_DATA_DIR", "")
	t.Chdir(t.TempDir())
	first, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(xdg, "routingservice", LocalSecretFile)); err != nil {
		t.Fatalf("generated secret not in the per-user dir: %v", err)
	}
	t.Chdir(t.TempDir())
	second, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if !second.LocalSecret || second.JWTSecret != first.JWTSecret {
		t.Fatal("a service started from another directory uses another secret")
	}
}
