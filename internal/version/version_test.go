package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	cases := []struct {
		name            string
		bi              *debug.BuildInfo
		version, commit string
		want            Info
	}{
		{"no build info", nil, "", "", Info{Current + "-dev", "unknown", ""}},
		{"linker flags win", &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v9.9.9"}, Settings: vcs("abc", "false")},
			"1.2.3", "def", Info{"1.2.3", "def", "go1.99"}},
		{"tagged module", &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v0.2.0"}}, "", "",
			Info{"0.2.0", "unknown", "go1.99"}},
		{"checkout", &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "(devel)"}, Settings: vcs("6d019e0", "false")}, "", "",
			Info{Current + "-dev", "6d019e0", "go1.99"}},
		{"modified checkout", &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v0.0.0-20261202045542-6d019e0abcde+dirty"}, Settings: vcs("6d019e0", "true")}, "", "",
			Info{Current + "-dev", "6d019e0-dirty", "go1.99"}},
		{"pseudo-version", &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v0.1.1-0.20261202045542-6d019e0abcde"}}, "", "",
			Info{Current + "-dev", "unknown", "go1.99"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := get(c.bi, c.version, c.commit)
			if c.want.GoVersion == "" {
				c.want.GoVersion = got.GoVersion // runtime.Version()
				if !strings.HasPrefix(got.GoVersion, "go") {
					t.Fatalf("Go version %q", got.GoVersion)
				}
			}
			if got != c.want {
				t.Fatalf("got %+v want %+v", got, c.want)
			}
		})
	}
}

func TestString(t *testing.T) {
	s := Info{"0.2.0", "abc", "go1.26.8"}.String()
	if s != "routingservice 0.2.0 (commit abc, go1.26.8)" {
		t.Fatal(s)
	}
}
