#!/usr/bin/env bash
# What the kernel does per gRPC call: BENCHMARKS.md, "Performance (issue
# 24): one hot key against a million".
#
#   scripts/syscalls-per-request.sh [SECONDS] [KEYS]...
#
# Starts a release quotad (in memory, the e2e benches' config: one plan
# of 1000/s with a burst of 10^8, so every check passes and charges) on
# CPU 1 with one runtime thread, and for each KEYS (default: 1 1000000 1)
# drives Envoy RLS calls at it with quotad-bench on CPU 0 (32 callers, 2
# connections, as `cargo bench --bench e2e`), counting the server's
# write (writev, sendto, write) and read syscalls and epoll waits with `perf stat` over SECONDS
# (default 4) in the middle of the run. Prints requests/s and each
# syscall per second and per request. Needs perf and the release
# binaries (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-4}
shift || true
keys_list=("$@")
[ ${#keys_list[@]} -eq 0 ] && keys_list=(1 1000000 1)
work=$(mktemp -d)
grpc=$((30000 + RANDOM % 10000))
http=$((grpc + 1))
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
sed "s/GRPC_PORT/$grpc/; s/HTTP_PORT/$http/" scripts/perf-quotad.yaml >"$work/quotad.yaml"
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/quotad serve --config "$work/quotad.yaml" --log warn &
pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break
    sleep 0.1
done
events=syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait
for keys in "${keys_list[@]}"; do
    taskset -c 0 target/release/quotad-bench --addr "127.0.0.1:$grpc" --mode rls --domain quotad \
        --keys "$keys" --threads 1 --connections 2 --concurrency 32 \
        --duration "$((seconds + 3))s" --warmup 1s --json >"$work/bench.json" &
    bench=$!
    sleep 2
    perf stat -e "$events" -p "$pid" -x, -o "$work/stat.txt" -- sleep "$seconds"
    wait "$bench"
    rps=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["requests_per_second"]))' "$work/bench.json")
    echo "keys $keys: $rps requests/s"
    grep -v '^#' "$work/stat.txt" | awk -F, -v s="$seconds" -v r="$rps" \
        'NF > 2 { printf "  %-32s %9.0f/s  %5.2f per request\n", $3, $1 / s, $1 / s / r }'
done
