#!/usr/bin/env bash
# A key flood in Redis sync mode, at scale: BENCHMARKS.md, "Key flood in
# sync mode".
#
#   scripts/sync-flood.sh [FLOOD_KEYS] [LEGIT_REQUESTS_PER_NODE] [WINDOW]
#
# Starts a redis-server on a free port and three release quotad nodes
# sharing it (default store cap: 1M cells each). Each node gets
# FLOOD_KEYS/3 checks of one-shot keys (default 10M in all, a third each:
# `flood-<node>-<random>`, on the default plan: 10 an hour, so a flood
# key's bucket holds its charge for 6 minutes and the store fills),
# while 1 000 legitimate keys (`key-0` … `key-999`, each on plan `legit`,
# a quota per WINDOW nobody reaches: day, the default, or hour) are checked
# LEGIT_REQUESTS_PER_NODE times on every node (default 200 000). Then it compares what Redis
# counts for the legitimate keys (the only counters in Redis: the flood's
# plan has buckets only) with the checks the clients saw allowed, and
# prints each node's dropped deltas, displaced cells and overflow checks.
# A counter of a window that is over stays in Redis only a minute, so a
# run that crosses a boundary (midnight UTC, or the hour) and ends more
# than a minute after it sums too little: run it again.
# Exits 1 unless Redis holds exactly what was charged and no node
# dropped a delta (keeping the nodes' logs). Needs redis-server,
# redis-cli and the release binaries (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
flood=${1:-10000000}
legit=${2:-200000}
window=${3:-day}
case "$window" in hour | day) ;; *) echo "WINDOW: hour or day, not $window" >&2; exit 64 ;; esac
work=$(mktemp -d)
port=$((30000 + RANDOM % 10000))
redis-server --port "$port" --save "" --appendonly no --daemonize yes --logfile "$work/redis.log" >/dev/null
pids=()
cleanup() {
    status=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    if [ "$status" -ne 0 ]; then
        echo "logs and reports kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
{
    cat <<YAML
default_plan: free
plans:
  free:
    limits:
      - { name: per-hour, rate: 10, per: hour }
  legit:
    limits:
      - { name: quota, quota: 1000000000, per: $window }
store: { hash_secret: "000102030405060708090a0b0c0d0e0f" }
redis: { url: "redis://127.0.0.1:$port" }
reload: { watch: false }
keys:
YAML
    for i in $(seq 0 999); do echo "  key-$i: { plan: legit }"; done
} > "$work/quotad.yaml"
for n in 0 1 2; do
    grpc=$((port + 10 + 2 * n))
    http=$((grpc + 1))
    target/release/quotad serve --config "$work/quotad.yaml" --grpc-addr "127.0.0.1:$grpc" \
        --http-addr "127.0.0.1:$http" --log warn >"$work/quotad-$n.log" 2>&1 &
    pids+=($!)
done
for n in 0 1 2; do
    http=$((port + 11 + 2 * n))
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
done
started=$(date +%s)
benches=()
for n in 0 1 2; do
    grpc=$((port + 10 + 2 * n))
    target/release/quotad-bench --addr "127.0.0.1:$grpc" --mode check --key-prefix "flood-$n-" \
        --keys 1000000000000 --dist uniform --concurrency 32 --connections 2 --warmup 0s \
        --duration 10m --requests $((flood / 3)) --json >"$work/flood-$n.json" 2>&1 &
    benches+=($!)
    target/release/quotad-bench --addr "127.0.0.1:$grpc" --mode check --key-prefix "key-" \
        --keys 1000 --dist uniform --concurrency 4 --connections 1 --warmup 0s \
        --duration 10m --requests "$legit" --json >"$work/legit-$n.json" 2>&1 &
    benches+=($!)
done
for b in "${benches[@]}"; do
    wait "$b" || { echo "a load run failed:"; tail -n 5 "$work"/*.json "$work"/quotad-*.log; exit 1; }
done
elapsed=$(($(date +%s) - started))
# Every node's deltas in Redis: nothing pending, nothing held aside (a
# node behind, or backing off after a round that timed out, catches up).
waited=0
for n in 0 1 2; do
    http=$((port + 11 + 2 * n))
    until [ "$(curl -sf "http://127.0.0.1:$http/metrics" | awk '$1=="quotad_redis_pending_deltas"{print $2}')" = 0 ]; do
        sleep 0.2
        waited=$((waited + 1))
        [ "$waited" -lt 600 ] || { echo "node $n still has deltas pending after 2 minutes"; exit 1; }
    done
done
field() { sed -n "s/.*\"$2\": *\([0-9.]*\).*/\1/p" "$1" | head -1; }
allowed=0
flood_rps=0
for n in 0 1 2; do
    a=$(field "$work/legit-$n.json" allowed)
    e=$(field "$work/legit-$n.json" errors)
    [ "$e" = 0 ] || { echo "legit run on node $n had $e errors"; cat "$work/legit-$n.json"; exit 1; }
    allowed=$((allowed + a))
    flood_rps=$(awk -v a="$flood_rps" -v b="$(field "$work/flood-$n.json" requests_per_second)" 'BEGIN{print a+b}')
done
counted=0
nkeys=0
while read -r k; do
    v=$(redis-cli -p "$port" get "$k")
    counted=$((counted + v))
    nkeys=$((nkeys + 1))
done < <(redis-cli -p "$port" --scan --pattern '*}c:*')
echo "flood: $flood one-shot keys over 3 nodes in ${elapsed}s (${flood_rps} checks/s in all); every delta in Redis $((waited / 5)) s after the load stopped"
echo "legit: 1000 keys, $allowed checks allowed over 3 nodes; Redis counts $counted in $nkeys counters"
dropped_all=0
for n in 0 1 2; do
    http=$((port + 11 + 2 * n))
    m=$(curl -sf "http://127.0.0.1:$http/metrics")
    get() { echo "$m" | awk -v s="$1" '$1==s{print $2}' | head -1; }
    dropped=$(get quotad_redis_dropped_deltas_total)
    echo "node $n: dropped deltas ${dropped:-0}, displaced $(get 'quotad_store_displaced_cells_total{kind="bucket"}') buckets and $(get 'quotad_store_displaced_cells_total{kind="counter"}') counters, overflow checks $(get quotad_overflow_checks_total), strict fail-mode answers $(echo "$m" | awk '/^quotad_strict_fail_mode_total/{s+=$2} END{print s+0}'), tracked $(get quotad_tracked_cells), RSS $(awk '/VmRSS/{print int($2/1024)}' "/proc/${pids[$n]}/status") MB"
    dropped_all=$((dropped_all + ${dropped:-0}))
done
echo "redis: $(redis-cli -p "$port" dbsize) keys, $(redis-cli -p "$port" info memory | awk -F: '/^used_memory_rss:/{print int($2/1048576)}') MB RSS"
if [ "$counted" -ne "$allowed" ] || [ "$dropped_all" -ne 0 ]; then
    echo "FAIL: Redis counts $counted of $allowed charged; $dropped_all deltas dropped"
    exit 1
fi
echo "OK: Redis holds exactly what the legitimate keys were charged; no delta dropped"
