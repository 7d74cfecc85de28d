#!/usr/bin/env bash
# Fuzzes quotad for a bounded time: every cargo-fuzz target in fuzz/ runs
# SECONDS_PER_TARGET seconds (default 60), one after another.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Environment: FUZZ_TARGETS (space-separated, default all), FUZZ_MAX_LEN
# (largest input in bytes, default 4096), FUZZ_SANITIZER (none, the
# default, or address).
#
# Not part of CI (.ci/run and scripts/test.sh do not call it): it is slow
# and its findings depend on time. Installs what it needs when missing: a
# C++ compiler (libfuzzer-sys builds libFuzzer) and cargo-fuzz, into
# target/tools. Each target starts from its committed seeds
# (fuzz/corpus/TARGET) and from what earlier runs found
# (fuzz/target/corpus/TARGET, not committed), with fuzz/dict/TARGET.dict
# when there is one. A crash, panic, timeout or
# out-of-memory input is saved under fuzz/artifacts/TARGET/; the script
# goes on with the other targets, then prints the artifacts and exits 1.
# Replay one with: fuzz/target/x86_64-unknown-linux-gnu/release/TARGET ARTIFACT
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 64
fi
max_len=${FUZZ_MAX_LEN:-4096}
sanitizer=${FUZZ_SANITIZER:-none}
targets=${FUZZ_TARGETS:-config_yaml rls_file native_api envoy_rls}
tools=$root/target/tools
for t in $targets; do
    if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
        echo "fuzz.sh: no target $t (see fuzz/fuzz_targets/)" >&2
        exit 64
    fi
done

if ! command -v c++ >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "fuzz.sh: installing g++" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq g++
fi
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "fuzz.sh: installing cargo-fuzz into $tools" >&2
    cargo install --locked --root "$tools" cargo-fuzz
fi

# cargo-fuzz builds with nightly-only flags (-Z options for rustc and
# cargo). This machine has a stable toolchain only and cannot fetch a
# nightly, so RUSTC_BOOTSTRAP=1 lets this stable compiler accept them.
# It changes nothing else; the main crate is never built with it.
export RUSTC_BOOTSTRAP=1
# -s none: coverage-guided, without AddressSanitizer. quotad forbids
# unsafe code, so ASan would mostly watch dependencies, at about half the
# speed; FUZZ_SANITIZER=address turns it on.
(cd fuzz && "$tools/bin/cargo-fuzz" build -s "$sanitizer" --codegen-units 16)

bin_dir=$root/fuzz/target/x86_64-unknown-linux-gnu/release
logs=$root/fuzz/target/logs
mkdir -p "$logs"
# The config target reads files the config names (relative paths): give
# it an empty working directory.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
summary=()
for t in $targets; do
    work=$root/fuzz/target/corpus/$t
    artifacts=$root/fuzz/artifacts/$t
    mkdir -p "$work" "$artifacts"
    echo "fuzz.sh: $t for ${seconds}s (max_len $max_len)" >&2
    # The text targets have dictionaries of their formats' keys and words.
    dict=()
    [ -f "$root/fuzz/dict/$t.dict" ] && dict=(-dict="$root/fuzz/dict/$t.dict")
    status=ok
    (cd "$scratch" && "$bin_dir/$t" "${dict[@]}" \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$work" "$root/fuzz/corpus/$t") \
        >"$logs/$t.log" 2>&1 || status=failed
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -n 1)
    corpus=$(find "$work" -type f | wc -l)
    summary+=("$t: $status, ${seconds}s, ${execs:-?} execs, ${rate:-?} execs/s, corpus $corpus (+ $(find "$root/fuzz/corpus/$t" -type f | wc -l) seeds), log $logs/$t.log")
    if [ "$status" = failed ]; then
        failed+=("$t")
        # The panic's message is on the line after "panicked at".
        grep -A1 "panicked at" "$logs/$t.log" | head -n 4 >&2 || true
        grep -E "^(==[0-9]+== ?ERROR|SUMMARY)" "$logs/$t.log" | head -n 4 >&2 || true
    fi
done

printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz.sh: findings in ${failed[*]}; artifacts:" >&2
    for t in "${failed[@]}"; do
        grep -o "Test unit written to .*" "$logs/$t.log" | sed 's/^Test unit written to /  /' >&2 || true
    done
    exit 1
fi
