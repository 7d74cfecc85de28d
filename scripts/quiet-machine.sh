#!/usr/bin/env bash
# Runs a command (a benchmark) with the two settings that set the open
# loop's tail on this kind of VM as most machines have them, and puts
# them back afterwards (BENCHMARKS.md, issue 24, "Open loop: where the
# tail comes from"):
#   - guest halt-polling up to 200 us (0 here: an idle vCPU halts at once
#     and the host takes 1.8-4 ms to wake it);
#   - DAMON's kdamonds off (proactive reclaim scanning memory on one core
#     for 4-15 ms every aggregation interval).
# Needs root; a setting the machine does not have is left alone.
#
#   scripts/quiet-machine.sh cargo bench --bench e2e
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 64; }
poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
damon=/sys/kernel/mm/damon/admin/kdamonds
saved_poll=""
on=()
restore() {
    [ -n "$saved_poll" ] && echo "$saved_poll" > "$poll"
    for d in "${on[@]}"; do echo on > "$d/state" || true; done
}
trap restore EXIT
if [ -w "$poll" ]; then
    saved_poll=$(cat "$poll")
    echo 200000 > "$poll"
fi
for d in "$damon"/[0-9]*; do
    [ -f "$d/state" ] || continue
    if [ "$(cat "$d/state")" = on ]; then
        echo off > "$d/state"
        on+=("$d")
    fi
done
echo "quiet-machine: halt-polling ${saved_poll:-n/a} -> $( [ -n "$saved_poll" ] && echo 200000 || echo n/a ) ns, ${#on[@]} kdamond(s) off" >&2
"$@"
