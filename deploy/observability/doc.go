// Package observability holds the service's operations as code: the Grafana
// dashboard (dashboard.json, generated from Dashboard by go generate), the
// Prometheus alerting rules (alerts.yaml, with their promtool unit tests in
// alerts_test.yaml) and the runbook the alerts link to (RUNBOOK.md).
//
// Its tests keep them true: every metric a dashboard query or an alert
// names is exported by a running instance, the rules pass promtool's
// checks and unit tests, and a Prometheus scraping a running instance
// evaluates every query and finds no alert firing on a healthy instance.
package observability
