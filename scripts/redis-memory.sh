#!/usr/bin/env bash
# Redis's memory under a per-second envoyproxy/ratelimit limit over many
# random keys with sync on: BENCHMARKS.md, "Redis memory for short windows".
#
#   scripts/redis-memory.sh [SECONDS] [KEYS]
#
# Starts a redis-server on a free port and a release quotad with one
# files domain (`key: api_key`, 1000 per second), drives it with
# quotad-bench (Envoy RLS, uniform over KEYS keys, 64 in flight over 4
# connections) for SECONDS (default 60), and prints Redis's key count
# and RSS every 5 s. Needs redis-server, redis-cli and the release
# binaries (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
keys=${2:-200000}
work=$(mktemp -d)
port=$((30000 + RANDOM % 10000))
grpc=$((port + 1))
http=$((port + 2))
redis-server --port "$port" --save "" --appendonly no --daemonize yes --logfile "$work/redis.log" >/dev/null
cleanup() {
    kill "${qpid:-}" 2>/dev/null || true
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/flood.yaml" <<'YAML'
domain: flood
descriptors:
  - key: api_key
    rate_limit: { unit: second, requests_per_unit: 1000 }
YAML
cat > "$work/quotad.yaml" <<YAML
default_plan: p
plans: { p: {} }
store: { hash_secret: "000102030405060708090a0b0c0d0e0f" }
redis: { url: "redis://127.0.0.1:$port" }
reload: { watch: false }
rls_files: [flood.yaml]
YAML
target/release/quotad serve --config "$work/quotad.yaml" --grpc-addr "127.0.0.1:$grpc" \
    --http-addr "127.0.0.1:$http" --log warn >"$work/quotad.log" 2>&1 &
qpid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
target/release/quotad-bench --addr "127.0.0.1:$grpc" --mode rls --domain flood \
    --keys "$keys" --dist uniform --concurrency 64 --connections 4 \
    --warmup 0s --duration "${seconds}s" >"$work/bench.txt" 2>&1 &
bpid=$!
peak=0
for t in $(seq 5 5 "$seconds"); do
    sleep 5
    n=$(redis-cli -p "$port" dbsize)
    rss=$(redis-cli -p "$port" info memory | awk -F: '/^used_memory_rss:/{print int($2/1048576)}')
    qrss=$(awk '/VmRSS/{print int($2/1024)}' "/proc/$qpid/status")
    [ "$n" -gt "$peak" ] && peak=$n
    echo "t=${t}s redis_keys=$n redis_rss_mb=$rss quotad_rss_mb=$qrss"
done
wait "$bpid" || true
sed -n 1,3p "$work/bench.txt"
echo "peak redis keys: $peak"
