// Package version says which build of the service is running: its semantic
// version, the commit it was built from and the Go version that built it.
//
// Release builds set Version and Commit with the linker:
//
//	go build -ldflags "-X github.com/go-routing-service/routingservice/internal/version.Version=0.3.0 \
//	  -X github.com/go-routing-service/routingservice/internal/version.Commit=$(git rev-parse HEAD)" ./cmd/routingservice
//
// Without them the build information the Go toolchain embeds is used: the
// module version when the binary was built from a tagged module, the VCS
// revision when it was built in a git checkout.
package version

import (
	"fmt"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
)

// Current is the version of the source tree: the release being prepared
// (see CHANGELOG.md). Builds that are not releases report it with "-dev".
const Current = "0.3.0"

// Set with -ldflags -X; empty means "from the build information".
var (
	Version string
	Commit  string
)

// Info describes one build.
type Info struct {
	Version   string // semantic version, without a leading "v"
	Commit    string // VCS revision, "-dirty" appended for a modified tree; "unknown" when not recorded
	GoVersion string // the Go release that built the binary
}

// Get returns the running binary's build description.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(bi, Version, Commit)
}

func get(bi *debug.BuildInfo, version, commit string) Info {
	info := Info{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		if info.Version == "" && released(bi.Main.Version) {
			info.Version = bi.Main.Version
		}
		if info.Commit == "" {
			var rev string
			var dirty bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
			if rev != "" && dirty {
				rev += "-dirty"
			}
			info.Commit = rev
		}
	}
	if info.Version == "" {
		info.Version = Current + "-dev"
	}
	info.Version = strings.TrimPrefix(info.Version, "v")
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// released reports whether a module version names a release: a tag such as
// v0.2.0, not "(devel)", a modified tree ("+dirty") nor a pseudo-version
// made from a commit (v0.0.0-20261202045542-6d019e0abcde and its forms).
func released(v string) bool {
	return v != "" && v != "(devel)" && !strings.Contains(v, "+") && !pseudo.MatchString(v)
}

var pseudo = regexp.MustCompile(`[-.][0-9]{14}-[0-9a-f]{12}$`)

// String is the one-line form printed by `routingservice version`.
func (i Info) String() string {
	return fmt.Sprintf("routingservice %s (commit %s, %s)", i.Version, i.Commit, i.GoVersion)
}
