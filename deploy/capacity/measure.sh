#!/usr/bin/env bash
# The measurements the capacity model (CAPACITY.md) is derived from, each
# RUNS times (the model takes the median), into OUTDIR:
#
#   three-N.txt    deploy/bench/three-instances.sh DURATION -json: A (api +
#                  pipeline), B (every role), C (realtime, the 1,000
#                  recipients), on a private NATS, Redis and PostgreSQL
#                  started here for the run; routebench's summary (JSON)
#                  with each process's CPU per delivered message, then the
#                  script's own lines
#   engines-N.json the engines' counters before and after that run:
#                  PostgreSQL (commits, rows written, WAL bytes), NATS
#                  (/varz messages and bytes in and out), Redis (commands,
#                  and the presence keys and their memory while the
#                  recipients were connected)
#   refresh-N.json a presence heartbeat's cost in Redis: the private Redis's
#                  CPU and commands while BenchmarkRefresh1000
#                  (internal/presence/redis) refreshes 1,000 connections per
#                  round trip, 300 times
#   offline-N.json routebench offline -embedded on the private PostgreSQL:
#                  OFFLINE_MESSAGES stored for 100 recipients, and the
#                  peak size of the store's tables (bytes per pending
#                  message)
#   idle-N.json    routebench idle -embedded -conns IDLE_CONNS: resident
#                  memory per idle WebSocket
#   meta.txt       when each run started and ended, the commit measured
#                  and the machine's load average then
#
#   deploy/capacity/measure.sh OUTDIR [RUNS=3] [DURATION=60s]
#   go run ./deploy/capacity -in OUTDIR      # the tables
#
# Environment: OFFLINE_MESSAGES (default 60000), IDLE_CONNS (default
# 10000), BIN_DIR (prebuilt routingservice and routebench). Loopback only;
# every engine it starts is stopped and its data removed on exit. The
# machine is shared: run it when nothing else is heavy, and read the
# spread of the runs.
set -euo pipefail

out=${1:?usage: measure.sh OUTDIR [RUNS] [DURATION]}
runs=${2:-3}
duration=${3:-60s}
offline_messages=${OFFLINE_MESSAGES:-60000}
idle_conns=${IDLE_CONNS:-10000}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
chmod 755 "$work"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
engine_pids=()

stop_engines() {
  for p in "${engine_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${engine_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  engine_pids=()
  if [ -d "$work/pg" ]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$work/pg"
  fi
  rm -rf "$work/nats"
}
cleanup() {
  stop_engines
  rm -rf "$work"
}
trap cleanup EXIT

bin=${BIN_DIR:-$work/bin}
built="commit $(git -C "$root" rev-parse --short HEAD)"
if [ -z "${BIN_DIR:-}" ]; then
  (cd "$root" && go build -o "$bin/routingservice" ./cmd/routingservice && go build -o "$bin/routebench" ./cmd/routebench)
  git -C "$root" diff --quiet HEAD -- '*.go' || built="$built + uncommitted changes"
else
  built="binaries from $BIN_DIR"
fi
(cd "$root" && go test -c -o "$work/presence-redis.test" ./internal/presence/redis)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_engines() {
  nats_port=$(free_port)
  nats_mon=$(free_port)
  mkdir -p "$work/nats"
  nats-server -a 127.0.0.1 -p "$nats_port" -m "$nats_mon" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
  nats_pid=$!
  engine_pids+=("$nats_pid")
  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  engine_pids+=("$redis_pid")
  pg_port=$(free_port)
  mkdir -p "$work/pg" && chown postgres "$work/pg"
  runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $work/pg" start >/dev/null
  pg_pid=$(head -n 1 "$work/pg/postmaster.pid")
  pg_url="postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable"
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$nats_mon/varz" && redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
}

# snapshot prints the engines' counters as one JSON object.
snapshot() {
  local pg nats redis
  pg=$("$pg_bin/psql" "$pg_url" -Atq -F ' ' -c "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted,
      pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint FROM pg_stat_database WHERE datname = current_database()")
  nats=$(curl -fsS "http://127.0.0.1:$nats_mon/varz")
  redis=$(redis-cli -p "$redis_port" info stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" {print $2}')
  python3 -c '
import json, sys
pg = [int(x) for x in sys.argv[1].split()]
v = json.load(sys.stdin)
print(json.dumps({
  "pg": {"xact_commit": pg[0], "tup_inserted": pg[1], "tup_updated": pg[2], "tup_deleted": pg[3], "wal_bytes": pg[4]},
  "nats": {k: v[k] for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")},
  "redis": {"commands": int(sys.argv[2])}}))' "$pg" "$redis" <<<"$nats"
}

# redis_presence samples, every second until stopped, the presence keys
# and their memory (the dataset and the keyspace's own tables, not the
# client buffers), keeping the sample with the most keys, beside the same
# memory of the empty database at the start.
redis_memory() {
  redis-cli -p "$redis_port" memory stats 2>/dev/null | tr -d '\r' |
    awk '{ if (prev == "dataset.bytes" || prev == "overhead.hashtable.main" || prev == "overhead.hashtable.expires") s += $0; prev = $0 } END { print s + 0 }'
}
redis_presence() {
  local best=0 base keys
  base=$(redis_memory)
  echo "{\"keys\": 0, \"bytes\": $base, \"base_bytes\": $base}" >"$work/presence.json"
  while :; do
    keys=$(redis-cli -p "$redis_port" dbsize 2>/dev/null || echo 0)
    if [ "${keys:-0}" -gt "$best" ]; then
      best=$keys
      echo "{\"keys\": $keys, \"bytes\": $(redis_memory), \"base_bytes\": $base}" >"$work/presence.json"
    fi
    sleep 1
  done
}

# offline_peak samples the size of the offline run's tables and keeps the
# largest.
offline_peak() {
  local best=0 size
  while :; do
    size=$("$pg_bin/psql" "$pg_url" -Atq -c "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_stat_user_tables WHERE schemaname = 'capoffline'" 2>/dev/null || echo 0)
    if [ "${size:-0}" -gt "$best" ]; then
      best=$size
      echo "$best" >"$work/offline-peak"
    fi
    sleep 0.5
  done
}

# meta.txt: when, which tree, and how busy the machine was.
note() {
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) run $1 $2: built from $built, load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >>"$out/meta.txt"
}
for run in $(seq 1 "$runs"); do
  note "$run" start
  echo "run $run of $runs: three instances, $duration" >&2
  start_engines
  before=$(snapshot)
  redis_presence &
  sampler=$!
  BIN_DIR=$bin DATABASE_URL=$pg_url PG_PID=$pg_pid NATS_URL=nats://127.0.0.1:$nats_port NATS_PID=$nats_pid \
    REDIS_ADDR=127.0.0.1:$redis_port REDIS_PID=$redis_pid \
    "$root/deploy/bench/three-instances.sh" "$duration" -json -window 10s >"$out/three-$run.txt"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  after=$(snapshot)
  python3 -c 'import json, sys; print(json.dumps({"before": json.loads(sys.argv[1]), "after": json.loads(sys.argv[2]), "presence": json.loads(sys.argv[3])}, indent=2))' \
    "$before" "$after" "$(cat "$work/presence.json")" >"$out/engines-$run.json"

  echo "run $run of $runs: presence heartbeats in Redis" >&2
  redis_cpu() { awk '{print $14 + $15}' "/proc/$redis_pid/stat"; }
  redis_cmds() { redis-cli -p "$redis_port" info stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" {print $2}'; }
  c0=$(redis_cpu); k0=$(redis_cmds)
  ROUTING_TEST_REDIS_ADDR=127.0.0.1:$redis_port "$work/presence-redis.test" -test.run '^$' \
    -test.bench '^BenchmarkRefresh1000$' -test.benchtime 300x >"$work/refresh.txt"
  c1=$(redis_cpu); k1=$(redis_cmds)
  echo "{\"commands\": $((k1 - k0)), \"redis_cpu_seconds\": $(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {print t / hz}'), \"benchmark\": \"$(grep '^Benchmark' "$work/refresh.txt" | tr -s ' \t' ' ')\"}" >"$out/refresh-$run.json"

  echo "run $run of $runs: offline, $offline_messages messages into PostgreSQL" >&2
  cat >"$work/offline.yaml" <<YAML
store: {type: postgres, postgres_schema: capoffline}
log: {level: warn}
YAML
  rm -f "$work/offline-peak"
  offline_peak &
  sampler=$!
  DATABASE_URL=$pg_url JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
    "$bin/routebench" offline -embedded -config "$work/offline.yaml" -messages "$offline_messages" -recipients 100 -json >"$work/offline.json"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); s["store_peak_bytes"] = int(sys.argv[2]); print(json.dumps(s, indent=2))' \
    "$work/offline.json" "$(cat "$work/offline-peak" 2>/dev/null || echo 0)" >"$out/offline-$run.json"
  stop_engines

  echo "run $run of $runs: $idle_conns idle WebSockets" >&2
  "$bin/routebench" idle -embedded -conns "$idle_conns" -duration 20s -json >"$out/idle-$run.json"
  note "$run" end
done
echo "measurements in $out" >&2
