#!/usr/bin/env bash
# Three instances on NATS + PostgreSQL + Redis on this machine, under the
# performance budget's load, as in BENCHMARKS.md:
#   A: api + pipeline (the senders post here)
#   B: every role
#   C: realtime (the recipients connect here)
# then `routebench online` for DURATION, and the CPU each process used.
#
#   deploy/bench/three-instances.sh [DURATION] [routebench flags...]
#
# Environment: DATABASE_URL (default the local test database), NATS_URL
# (default nats://127.0.0.1:4222), REDIS_ADDR (default 127.0.0.1:6379),
# NATS_PID to count a NATS server's CPU too, BIN_DIR for prebuilt
# routingservice and routebench binaries (default: built into a temporary
# directory from this tree). Loopback only; everything it starts is stopped
# on exit.
set -euo pipefail

duration=${1:-20s}
shift || true
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
export JWT_SECRET=${JWT_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
nats_url=${NATS_URL:-nats://127.0.0.1:4222}
redis_addr=${REDIS_ADDR:-127.0.0.1:6379}

bin=${BIN_DIR:-$work/bin}
if [ -z "${BIN_DIR:-}" ]; then
  (cd "$root" && go build -o "$bin/routingservice" ./cmd/routingservice && go build -o "$bin/routebench" ./cmd/routebench)
fi

# instance name, roles, port prefix (API <p>82, WebSocket <p>85, ops <p>90)
for spec in "a api,pipeline 190" "b api,pipeline,realtime 191" "c realtime 192"; do
  read -r name roles port <<<"$spec"
  cat >"$work/$name.yaml" <<EOF
instance_id: bench-$name
roles: [$roles]
data_dir: $work/data-$name
api: {listen: "127.0.0.1:${port}82", rate_limit: 0}
realtime: {listen: "127.0.0.1:${port}85", max_conns: 100000, max_conns_per_ip: 0, connect_rate_per_ip: 0, connect_rate_per_user: 0}
ops: {listen: "127.0.0.1:${port}90"}
bus: {type: nats, nats: {url: "$nats_url", subject_prefix: threebench}}
store: {type: postgres, postgres_schema: threebench}
presence: {type: redis, redis: {addr: "$redis_addr", key_prefix: "threebench:"}}
push: {webpush: {enabled: false}}
admin: {socket: "-"}
log: {level: warn}
EOF
  "$bin/routingservice" serve --config "$work/$name.yaml" >"$work/$name.log" 2>&1 &
  pids+=($!)
done

for port in 19090 19190 19290; do
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" || { cat "$work"/*.log; echo "instance on ops port $port not ready" >&2; exit 1; }
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, clock ticks
watched=("${pids[@]}" ${NATS_PID:-})
before=(); for p in "${watched[@]}"; do before+=("$(cpu "$p")"); done

status=0
"$bin/routebench" online -api http://127.0.0.1:19082 -ws ws://127.0.0.1:19285 -duration "$duration" "$@" || status=$?

hz=$(getconf CLK_TCK)
names=(A B C NATS)
for i in "${!watched[@]}"; do
  after=$(cpu "${watched[$i]}")
  echo "cpu ${names[$i]}: $(awk -v t=$((after - before[i])) -v hz="$hz" 'BEGIN {printf "%.2f s", t / hz}')"
done
exit $status
