package main

import (
	"io"
	"strings"
	"testing"

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
