// Package deploy holds what runs the service outside a developer's machine:
// the Kubernetes manifests (kubernetes/), a compose file for several
// instances on NATS, PostgreSQL and Redis (compose/) and a systemd unit for
// a single node (systemd/); observability/, a package of its own, holds the
// dashboard, the alerting rules and their runbook. Its tests check them
// against the binary and the configuration they run: the container image's
// build (../Dockerfile) and the rendered Kubernetes objects.
package deploy
