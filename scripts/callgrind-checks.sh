#!/usr/bin/env bash
# Instructions per check in a real quotad server, counted by callgrind
# (repeatable whatever else the machine does): BENCHMARKS.md, "What
# admission costs on the hot path".
#
#   scripts/callgrind-checks.sh CASE [TREE]
#
# CASE: displace (new keys into a store full of one-shot cells), refuse
# (new keys into a store full of cells charged twice), tracked (keys
# already tracked, in batches of 100), check (native unary Check calls,
# tracked keys), rls (Envoy RLS calls of one descriptor, tracked keys, a
# plan domain), rlsfile (the same in a domain from an envoyproxy/ratelimit
# file: descriptor rule, fixed window, per-descriptor metrics).
# TREE: a checkout whose release binaries are built (default: this one),
# so an older tree can be measured the same way. Needs valgrind and curl.
set -euo pipefail
case_name=${1:?usage: callgrind-checks.sh displace|refuse|tracked|check|rls|rlsfile [TREE]}
tree=$(cd "${2:-$(dirname "$0")/..}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/quotad.yaml" <<'YAML'
default_plan: p
plans:
  p:
    limits:
      - { name: daily, rate: 1, per: day, burst: 100000 }
store: { max_tracked_keys: 10000, sweep_interval: 1h }
reload: { watch: false }
response_headers: "off"
YAML
cat > "$work/files.yaml" <<'YAML'
domain: files
descriptors:
  - key: api_key
    rate_limit: { unit: day, requests_per_unit: 1000000000 }
YAML
port=$((20000 + RANDOM % 10000))
valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
    "$tree/target/release/quotad" serve --config "$work/quotad.yaml" --limits "$work/files.yaml" \
    --grpc-addr "127.0.0.1:$port" --http-addr "127.0.0.1:$((port + 1))" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$((port + 1))/readyz" >/dev/null 2>&1 && break
    sleep 1
done
bench=("$tree/target/release/quotad-bench" --addr "127.0.0.1:$port" --concurrency 1
    --connections 1 --warmup 0s --duration 5m)
# 10 000 keys, each charged once.
fill() { "${bench[@]}" --mode batch --batch 100 --dist seq --keys 10000 --requests 100 >/dev/null; }
new_keys=(--mode batch --batch 100 --dist uniform --keys 1000000000000000000 --requests 200)
case $case_name in
    displace) fill; measure=("${new_keys[@]}"); n=20000 ;;
    refuse) fill; fill; measure=("${new_keys[@]}"); n=20000 ;;
    tracked) fill; fill; measure=(--mode batch --batch 100 --dist uniform --keys 10000 --requests 200); n=20000 ;;
    check) fill; fill; measure=(--mode check --dist uniform --keys 10000 --requests 3000); n=3000 ;;
    rls) fill; fill; measure=(--mode rls --dist uniform --keys 10000 --requests 3000); n=3000 ;;
    rlsfile)
        for _ in 1 2; do
            "${bench[@]}" --mode rls --domain files --dist seq --keys 10000 --requests 10000 >/dev/null
        done
        measure=(--mode rls --domain files --dist uniform --keys 10000 --requests 3000); n=3000 ;;
    *) echo "unknown case $case_name" >&2; exit 64 ;;
esac
callgrind_control -z "$pid" >/dev/null
"${bench[@]}" "${measure[@]}" | sed -n 2p
callgrind_control -d "$pid" >/dev/null
kill -TERM "$pid"
wait "$pid" || true
total=$(callgrind_annotate "$work"/cg.*.1 2>/dev/null | grep -m1 'PROGRAM TOTALS' | awk '{print $1}' | tr -d ,)
echo "$case_name: $total instructions / $n = $((total / n)) per check"
