#!/usr/bin/env bash
# Several instances of the service on this machine, without Docker, sharing
# the machine's NATS (JetStream), PostgreSQL and Redis: each instance with
# its own ports, data dir and instance id, all with one JWT secret and one
# VAPID key pair (an instance left to itself generates its own, and a token
# signed for one would fail on the other). docs/local-cluster.md walks
# through it.
#
#   deploy/local/cluster.sh start [N]   start N instances (default 2, at most 5) and wait until each is ready
#   deploy/local/cluster.sh status      the instances' addresses and whether each answers /readyz
#   deploy/local/cluster.sh stop        stop them (SIGTERM: each drains), keep their state
#   deploy/local/cluster.sh clean       stop them, delete the cluster's NATS streams, PostgreSQL
#                                       schema and Redis keys (its prefix) and its directory
#   deploy/local/cluster.sh dir         print the cluster's directory
#
# Instance i (1..N) listens on 127.0.0.1: API i8082, WebSocket i8085,
# operations i9090 (18082, 18085, 19090 for the first; 28082, ... for the
# second), unless ROUTING_CLUSTER_PORTS lists the ports to use instead,
# three per instance in that order.
#
# Environment (defaults in brackets):
#   NATS_URL                [nats://127.0.0.1:4222]   a NATS server with JetStream (-js)
#   DATABASE_URL            [postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable]
#   REDIS_ADDR              [127.0.0.1:6379]
#   ROUTING_CLUSTER_PREFIX  [localcluster]  NATS subject prefix, PostgreSQL schema and Redis key
#                           prefix of this cluster: clusters with other prefixes share the servers
#   ROUTING_CLUSTER_DIR     [${XDG_STATE_HOME:-~/.local/state}/routingservice/<prefix>]
#                           configs, data dirs, logs, pids, the shared JWT secret and VAPID key
#   ROUTINGSERVICE          [routingservice on PATH, else built from this tree into the directory]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
prefix=${ROUTING_CLUSTER_PREFIX:-localcluster}
dir=${ROUTING_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/routingservice/$prefix}
nats_url=${NATS_URL:-nats://127.0.0.1:4222}
database_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
redis_addr=${REDIS_ADDR:-127.0.0.1:6379}

die() { echo "cluster.sh: $*" >&2; exit 1; }

# ports I: the API, WebSocket and operations ports of instance I.
ports() {
  local i=$1
  if [ -n "${ROUTING_CLUSTER_PORTS:-}" ]; then
    # shellcheck disable=SC2206
    local p=($ROUTING_CLUSTER_PORTS)
    [ "${#p[@]}" -ge $((3 * i)) ] || die "ROUTING_CLUSTER_PORTS lists ${#p[@]} ports; instance $i needs $((3 * i))"
    echo "${p[$((3 * i - 3))]} ${p[$((3 * i - 2))]} ${p[$((3 * i - 1))]}"
  else
    echo "${i}8082 ${i}8085 ${i}9090"
  fi
}

binary() {
  if [ -n "${ROUTINGSERVICE:-}" ]; then echo "$ROUTINGSERVICE"; return; fi
  if command -v routingservice >/dev/null 2>&1; then command -v routingservice; return; fi
  (cd "$root" && go build -o "$dir/bin/routingservice" ./cmd/routingservice) || die "build failed"
  echo "$dir/bin/routingservice"
}

instances() { ls "$dir"/*.pid 2>/dev/null | sed 's#.*/instance-\([0-9]*\)\.pid#\1#' | sort -n; }

alive() { [ -f "$dir/instance-$1.pid" ] && kill -0 "$(cat "$dir/instance-$1.pid")" 2>/dev/null; }

ready() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/readyz" 2>/dev/null; }

start() {
  local n=${1:-2}
  [[ "$n" =~ ^[1-5]$ ]] || die "start takes 1 to 5 instances, got $n"
  mkdir -p "$dir" && chmod 700 "$dir"
  local bin
  bin=$(binary)
  # One JWT secret and one VAPID key pair for every instance, made once.
  [ -s "$dir/jwt_secret" ] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/jwt_secret")
  if [ ! -s "$dir/vapid_private_key" ]; then
    local pair
    pair=$("$bin" vapid)
    (umask 077 && sed -n 's/^private_key: //p' <<<"$pair" >"$dir/vapid_private_key")
    sed -n 's/^public_key: //p' <<<"$pair" >"$dir/vapid_public_key"
  fi
  local i api ws ops
  for i in $(seq 1 "$n"); do
    if alive "$i"; then echo "instance $i is running already"; continue; fi
    read -r api ws ops <<<"$(ports "$i")"
    cat >"$dir/instance-$i.yaml" <<YAML
# instance $i of the local cluster $prefix (deploy/local/cluster.sh)
instance_id: $prefix-$i
data_dir: $dir/data-$i
api: {listen: "127.0.0.1:$api"}
realtime: {listen: "127.0.0.1:$ws"}
ops: {listen: "127.0.0.1:$ops"}
bus: {type: nats, nats: {url: "$nats_url", subject_prefix: $prefix}}
store: {type: postgres, postgres_schema: $prefix}
presence: {type: redis, redis: {addr: "$redis_addr", key_prefix: "$prefix:"}}
push:
  webpush:
    vapid_public_key: "$(cat "$dir/vapid_public_key")"
    vapid_private_key_file: $dir/vapid_private_key
YAML
    JWT_SECRET=$(cat "$dir/jwt_secret") DATABASE_URL=$database_url ROUTING_CONFIG= \
      nohup "$bin" serve --config "$dir/instance-$i.yaml" >"$dir/instance-$i.log" 2>&1 </dev/null &
    echo $! >"$dir/instance-$i.pid"
  done
  for i in $(seq 1 "$n"); do
    read -r api ws ops <<<"$(ports "$i")"
    local waited=0
    until ready "$ops"; do
      alive "$i" || { tail -n 20 "$dir/instance-$i.log" >&2; die "instance $i exited (log: $dir/instance-$i.log)"; }
      [ "$waited" -lt 600 ] || die "instance $i not ready after 60 s (log: $dir/instance-$i.log)"
      sleep 0.1
      waited=$((waited + 1))
    done
    echo "instance $i ready: API http://127.0.0.1:$api, WebSocket ws://127.0.0.1:$ws, ops http://127.0.0.1:$ops"
  done
  echo "JWT secret: $dir/jwt_secret (export JWT_SECRET=\$(cat $dir/jwt_secret) before routingservice token)"
}

status() {
  local i api ws ops
  for i in $(instances); do
    read -r api ws ops <<<"$(ports "$i")"
    if alive "$i" && ready "$ops"; then s=ready; elif alive "$i"; then s="running, not ready"; else s=stopped; fi
    echo "instance $i: $s (API 127.0.0.1:$api, WebSocket 127.0.0.1:$ws, ops 127.0.0.1:$ops)"
  done
}

stop() {
  local i pid
  for i in $(instances); do
    pid=$(cat "$dir/instance-$i.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { echo "instance $i did not stop in 30 s: killed" >&2; kill -KILL "$pid" 2>/dev/null || true; }
      echo "instance $i stopped"
    fi
    rm -f "$dir/instance-$i.pid"
  done
}

clean() {
  stop
  # The cluster's objects in the shared servers, by its prefix.
  (cd "$root" && go run ./deploy/cleanup -nats "$nats_url" -postgres "$database_url" -redis "$redis_addr" -prefix "$prefix" -delete)
  rm -rf "$dir"
  echo "cleaned: prefix $prefix, $dir"
}

case "${1:-}" in
  start) start "${2:-2}" ;;
  status) status ;;
  stop) stop ;;
  clean) clean ;;
  dir) echo "$dir" ;;
  *) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
