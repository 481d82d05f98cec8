package main

import (
	"fmt"
	"io"

	"github.com/go-routing-service/routingservice/internal/version"
)

// printVersion prints the build: version, commit and Go version.
func printVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, version.Get())
	return nil
}
