#!/usr/bin/env bash
# The HTTP check door against gRPC on the same machine: BENCHMARKS.md,
# "HTTP door and reports".
#
#   scripts/http-bench.sh [KEYS] [SECONDS] [ROUNDS]
#
# Starts a release quotad (no Redis) with the HTTP check door on and a
# plan of 10^9 a second (every check allowed: the cost of answering, not
# of denying), then runs quotad-bench in alternating rounds (default 3)
# of SECONDS each (default 10, after a 1 s warm-up), KEYS distinct keys
# (default 100 000), 64 callers:
#   grpc-check   --mode check over 4 HTTP/2 connections
#   http-auth    --mode http-auth, GET /v1/auth, one HTTP/1.1 keep-alive
#                connection per caller (64), as NGINX keeps to upstreams
#   grpc-report  --mode report over 4 HTTP/2 connections
# and prints each run's requests/s, p50/p99 and the server's CPU per
# request (from /proc/PID/stat), then the medians and the ratio
# http-auth / grpc-check. Needs the release binaries (cargo build
# --release).
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
seconds=${2:-10}
rounds=${3:-3}
work=$(mktemp -d)
grpc=$((30000 + RANDOM % 10000))
http=$((grpc + 1))
door=$((grpc + 2))
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/quotad.yaml" <<YAML
default_plan: bench
plans:
  bench:
    limits:
      - { name: fast, rate: 1000000000, per: second }
server:
  grpc_addr: 127.0.0.1:$grpc
  http_addr: 127.0.0.1:$http
  http_check:
    addr: 127.0.0.1:$door
reload: { watch: false }
YAML
target/release/quotad serve --config "$work/quotad.yaml" --log warn &
pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break
    sleep 0.1
done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
run() {
    local name=$1 addr=$2 mode=$3
    local before after out
    before=$(ticks)
    out=$(target/release/quotad-bench --addr "$addr" --mode "$mode" --keys "$keys" \
        --concurrency 64 --connections 4 --duration "${seconds}s" --warmup 1s --json)
    after=$(ticks)
    local rps p50 p99 errors us
    rps=$(echo "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["requests_per_second"]))')
    p50=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_us"]["p50"])')
    p99=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_us"]["p99"])')
    errors=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"])')
    # CPU over warm-up and run, per request of the run (warm-up load is
    # the same: seconds + 1 at the measured rate).
    us=$(echo "scale=2; ($after - $before) / $hz * 1000000 / ($rps * ($seconds + 1))" | bc)
    echo "$name rps $rps p50 ${p50}us p99 ${p99}us errors $errors server-cpu-us/req $us"
    echo "$name $rps" >>"$work/results"
}
for r in $(seq "$rounds"); do
    run grpc-check "127.0.0.1:$grpc" check
    run http-auth "127.0.0.1:$door" http-auth
    run grpc-report "127.0.0.1:$grpc" report
done
median() { grep "^$1 " "$work/results" | awk '{print $2}' | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
check=$(median grpc-check)
auth=$(median http-auth)
report=$(median grpc-report)
echo "median requests/s: grpc-check $check, http-auth $auth, grpc-report $report"
echo "http-auth / grpc-check: $(echo "scale=3; $auth / $check" | bc)"
