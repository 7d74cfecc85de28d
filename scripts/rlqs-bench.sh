#!/usr/bin/env bash
# Envoy RLQS at scale on one node: BENCHMARKS.md, "Envoy RLQS".
#
#   scripts/rlqs-bench.sh [STREAMS] [BUCKETS] [KEYS] [SECONDS]
#
# Starts a release quotad (no Redis) with an `rlqs` domain `bench` whose
# rule gives each `{tenant: *}` bucket 1000/s, then `quotad-bench --mode
# rlqs`: STREAMS simulated Envoys (default 1000, one connection each),
# each reporting BUCKETS buckets (default 100) every 5 s, bucket ids drawn
# in turn from KEYS tenants (default 100 000: every (Envoy, bucket) pair
# its own bucket; 100: every Envoy reports the same 100), for SECONDS
# (default 60) after a 10 s warm-up. Prints the load generator's report,
# the server's CPU over the measured time (from /proc/PID/stat: user +
# system), its resident memory at the end, and the RLQS gauges. Needs
# the release binaries (cargo build --release). With REDIS=1, a
# redis-server on a free port is started and the node exchanges demand
# through it (its CPU is printed too).
set -euo pipefail
cd "$(dirname "$0")/.."
streams=${1:-1000}
buckets=${2:-100}
keys=${3:-100000}
seconds=${4:-60}
work=$(mktemp -d)
grpc=$((30000 + RANDOM % 10000))
http=$((grpc + 1))
redis_port=$((grpc + 2))
trap 'kill "$pid" 2>/dev/null || true; redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
redis_section=""
if [ "${REDIS:-0}" = 1 ]; then
    redis-server --port "$redis_port" --save "" --appendonly no --daemonize yes --logfile "$work/redis.log" >/dev/null
    redis_section="redis: { url: \"redis://127.0.0.1:$redis_port\" }
store: { hash_secret: \"000102030405060708090a0b0c0d0e0f\" }"
fi
cat >"$work/quotad.yaml" <<YAML
plans: { open: {} }
default_plan: open
server:
  grpc_addr: 127.0.0.1:$grpc
  http_addr: 127.0.0.1:$http
  max_connections: $((streams + 64))
reload: { watch: false }
$redis_section
rlqs:
  max_streams: $((streams + 64))
  max_tracked: $((streams * buckets + 1))
  domains:
    bench:
      - { match: { tenant: "*" }, rate: 1000, per: second, burst: 2000 }
YAML
ulimit -n $((streams * 2 + 1024)) 2>/dev/null || true
target/release/quotad serve --config "$work/quotad.yaml" --log warn &
pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break
    sleep 0.1
done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
target/release/quotad-bench --addr "127.0.0.1:$grpc" --mode rlqs --domain bench \
    --concurrency "$streams" --connections "$streams" --buckets "$buckets" \
    --keys "$keys" --cost 20 --duration "${seconds}s" --warmup 10s --threads 1 >"$work/bench.txt" &
bench=$!
sleep 10
before=$(ticks)
wait "$bench"
after=$(ticks)
cat "$work/bench.txt"
echo "server cpu: $(echo "scale=3; ($after - $before) / $hz / $seconds * 100" | bc)% of one core over ${seconds}s"
echo "server rss: $(awk '/VmRSS/ {print $2 / 1024 " MiB"}' "/proc/$pid/status")"
curl -s "http://127.0.0.1:$http/metrics" | grep -E '^quotad_rlqs_(streams|buckets|tracked|refused_total)'
if [ "${REDIS:-0}" = 1 ]; then
    redis-cli -p "$redis_port" info commandstats | grep -E 'evalsha|cmdstat_eval:' || true
    echo "redis cpu (process lifetime): $(redis-cli -p "$redis_port" info cpu | grep -E 'used_cpu_(sys|user):' | tr '\r\n' '  ')"
fi
