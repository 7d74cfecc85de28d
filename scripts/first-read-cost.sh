#!/usr/bin/env bash
# The cost of first reads (redis.first_read_min_window): quotad-bench
# Check calls over KEYS uniform keys (default 1M: nearly every check is a
# node's first sight of its key) against a release quotad whose plan has a
# per-second rate and a daily quota, Redis sync on. BENCHMARKS.md, "Redis
# sync at scale".
#
#   scripts/first-read-cost.sh off|1m [KEYS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
port=$((30000 + RANDOM % 10000)); grpc=$((port+1)); http=$((port+2))
redis-server --port "$port" --save "" --appendonly no --daemonize yes --logfile "$work/redis.log" >/dev/null
cat > "$work/q.yaml" <<YAML
default_plan: p
plans:
  p:
    limits:
      - { name: per-second, rate: 1000, per: second, burst: 1000 }
      - { name: daily, quota: 1000000, per: day }
store: { hash_secret: "000102030405060708090a0b0c0d0e0f" }
redis: { url: "redis://127.0.0.1:$port", first_read_min_window: $1 }
reload: { watch: false }
YAML
target/release/quotad serve --config "$work/q.yaml" --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" --log warn >"$work/q.log" 2>&1 &
q=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
target/release/quotad-bench --addr "127.0.0.1:$grpc" --mode check --keys ${2:-1000000} --dist uniform --warmup 2s --duration 10s 2>&1 | sed -n 1,3p
kill $q; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"
