#!/usr/bin/env bash
# Three instances on NATS + PostgreSQL + Redis on this machine, under the
# performance budget's load, as in BENCHMARKS.md:
#   A: api + pipeline (the senders post here)
#   B: every role
#   C: realtime (the recipients connect here)
# then `routebench online` for DURATION, the CPU each process used, and the
# size of the store's tables after the first minute and at the end.
#
#   deploy/bench/three-instances.sh [DURATION] [routebench flags...]
#
# Environment:
#   PRIVATE_PG=1  start a private PostgreSQL cluster for the run (the
#                 machine's binaries, initdb + pg_ctl on a free loopback
#                 port, autovacuum at its defaults unless PG_OPTS says
#                 otherwise), removed afterwards
#   PG_OPTS       extra postgres options for the private cluster, e.g.
#                 "-c autovacuum=off"
#   PG_LOG        with PRIVATE_PG: copy the server's log there at the end
#   PG_STATEMENTS=1  with PRIVATE_PG: load pg_stat_statements and print the
#                 statements that took the most time
#   DATABASE_URL  otherwise (default the local test database); the run's
#                 schema is dropped at the end
#   PG_PID        without PRIVATE_PG: the PostgreSQL postmaster to count
#                 (its backends included)
#   NATS_URL      default nats://127.0.0.1:4222; NATS_PID to count its CPU
#   REDIS_ADDR    default 127.0.0.1:6379; REDIS_PID to count its CPU
# Each process counted is labelled in routebench's summary (A, B, C, nats,
# redis, postgres), per delivered message.
# The run's streams and keys (prefix threebench<pid>) are deleted at the end.
#   BIN_DIR       prebuilt routingservice and routebench binaries (default:
#                 built into a temporary directory from this tree)
# Loopback only; everything it starts is stopped on exit.
set -euo pipefail

duration=${1:-20s}
shift || true
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
chmod 755 "$work"
pids=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
prefix=threebench$$
psql_url() { "$pg_bin/psql" "$DATABASE_URL" -v ON_ERROR_STOP=1 -Atq "$@"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${PRIVATE_PG:-}" ]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    [ -n "${PG_LOG:-}" ] && cp "$work/pg/server.log" "$PG_LOG"
  else
    psql_url -c "DROP SCHEMA IF EXISTS $prefix CASCADE" 2>/dev/null || true
  fi
  [ -x "$work/cleanup" ] && "$work/cleanup" -nats "$nats_url" -redis "$redis_addr" -prefix "$prefix" -delete >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

nats_url=${NATS_URL:-nats://127.0.0.1:4222}
redis_addr=${REDIS_ADDR:-127.0.0.1:6379}
bin=${BIN_DIR:-$work/bin}
if [ -z "${BIN_DIR:-}" ]; then
  (cd "$root" && go build -o "$bin/routingservice" ./cmd/routingservice && go build -o "$bin/routebench" ./cmd/routebench)
fi
(cd "$root" && go build -o "$work/cleanup" ./deploy/cleanup)

if [ -n "${PRIVATE_PG:-}" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/pg" && chown postgres "$work/pg"
  runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $work/pg ${PG_STATEMENTS:+-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all} ${PG_OPTS:-}" start >/dev/null
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
  pg_pid=$(head -n 1 "$work/pg/postmaster.pid")
  [ -n "${PG_STATEMENTS:-}" ] && psql_url -c "CREATE EXTENSION pg_stat_statements"
else
  export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
  pg_pid=${PG_PID:-}
fi
export JWT_SECRET=${JWT_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}

# instance name, roles, port prefix (API <p>82, WebSocket <p>85, ops <p>90)
for spec in "a api,pipeline 190" "b api,pipeline,realtime 191" "c realtime 192"; do
  read -r name roles port <<<"$spec"
  cat >"$work/$name.yaml" <<YAML
instance_id: bench-$name
roles: [$roles]
data_dir: $work/data-$name
api: {listen: "127.0.0.1:${port}82", rate_limit: 0}
realtime: {listen: "127.0.0.1:${port}85", max_conns: 100000, max_conns_per_ip: 0, connect_rate_per_ip: 0, connect_rate_per_user: 0}
ops: {listen: "127.0.0.1:${port}90"}
bus: {type: nats, nats: {url: "$nats_url", subject_prefix: $prefix}}
store: {type: postgres, postgres_schema: $prefix}
presence: {type: redis, redis: {addr: "$redis_addr", key_prefix: "$prefix:"}}
push: {webpush: {enabled: false}}
admin: {socket: "-"}
log: {level: warn}
YAML
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

# CPU of a process and, for PostgreSQL, of its children (live backends, and
# those that ended: cutime + cstime), in clock ticks.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pgcpu() {
  local t c
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat")
  for c in $(pgrep -P "$1"); do t=$((t + $(cpu "$c" 2>/dev/null || echo 0))); done
  echo "$t"
}
tables() {
  psql_url -F ' ' -c "SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables WHERE schemaname = '$prefix' ORDER BY relname" |
    awk -v at="$1" '{printf "tables %s: %-16s live %8d dead %8d size %8.1f MiB\n", at, $1, $2, $3, $4 / 1048576}'
}
watched=("${pids[@]}" ${NATS_PID:-} ${REDIS_PID:-})
labels=(A B C ${NATS_PID:+nats} ${REDIS_PID:+redis})
before=(); for p in "${watched[@]}"; do before+=("$(cpu "$p")"); done
[ -n "$pg_pid" ] && pg_before=$(pgcpu "$pg_pid")

# The tables after the first minute, while the run goes on.
( sleep 60 && tables "after 60 s" >"$work/tables-60" 2>&1 ) &
sampler=$!

status=0
labelled=()
for i in "${!watched[@]}"; do labelled+=("${labels[$i]}=${watched[$i]}"); done
"$bin/routebench" online -api http://127.0.0.1:19082 -ws ws://127.0.0.1:19285 -duration "$duration" \
  -pids "$(IFS=,; echo "${labelled[*]}${pg_pid:+,postgres=$pg_pid}")" "$@" || status=$?

hz=$(getconf CLK_TCK)
for i in "${!watched[@]}"; do
  after=$(cpu "${watched[$i]}")
  echo "cpu ${labels[$i]}: $(awk -v t=$((after - before[i])) -v hz="$hz" 'BEGIN {printf "%.2f s", t / hz}')"
done
[ -n "$pg_pid" ] && echo "cpu PostgreSQL: $(awk -v t=$(($(pgcpu "$pg_pid") - pg_before)) -v hz="$hz" 'BEGIN {printf "%.2f s", t / hz}')"
kill "$sampler" 2>/dev/null || true
cat "$work/tables-60" 2>/dev/null || true
tables "at the end"
if [ -n "${PG_STATEMENTS:-}" ] && [ -n "${PRIVATE_PG:-}" ]; then
  psql_url -F ' | ' -c "SELECT calls, round(total_exec_time)::int AS total_ms, round(mean_exec_time::numeric, 3) AS mean_ms, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15" | sed 's/^/statement: /'
fi
exit $status
