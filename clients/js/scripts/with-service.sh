#!/usr/bin/env bash
# Runs a command against a fresh instance of the service: builds the
# binary, starts it on free loopback ports with a temporary data dir and
# the demo (--demo: the tests sign in through its /demo/token),
# waits until it answers, runs "$@" with ROUTING_API_URL and ROUTING_WS_URL
# set, and stops the service.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && go build -o "$work/routingservice" ./cmd/routingservice)
freeport() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
api_port="$(freeport)"
ws_port="$(freeport)"
cat > "$work/config.yaml" <<YAML
data_dir: $work/data
api:
  listen: "127.0.0.1:$api_port"
  rate_limit: 0
realtime:
  listen: "127.0.0.1:$ws_port"
ops:
  listen: "127.0.0.1:0"
push:
  webpush:
    enabled: true
YAML
"$work/routingservice" serve --demo --config "$work/config.yaml" >"$work/service.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$api_port/demo/" 2>/dev/null; then break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$work/service.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$api_port/demo/" || { echo "service did not come up" >&2; cat "$work/service.log" >&2; exit 1; }

export ROUTING_API_URL="http://127.0.0.1:$api_port"
export ROUTING_WS_URL="ws://127.0.0.1:$ws_port"
status=0
"$@" || status=$?
if [ "$status" -ne 0 ]; then echo "--- service log" >&2; tail -n 50 "$work/service.log" >&2; fi
exit "$status"
