// Command gendashboard writes the service's Grafana dashboard,
// observability.Dashboard, to dashboard.json in the working directory
// (run by go generate in deploy/observability).
package main

import (
	"fmt"
	"os"

	"github.com/go-routing-service/routingservice/deploy/observability"
)

func main() {
	b, err := observability.DashboardJSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendashboard:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(observability.DashboardFile, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendashboard:", err)
		os.Exit(1)
	}
}
