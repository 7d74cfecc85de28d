#!/usr/bin/env bash
# Runs every test of quotad on a fresh Debian machine with Rust.
#
# Installs what the tests need when it is missing (nothing beyond cargo is
# needed yet: protoc is vendored by the build; later capabilities add
# redis-server here), then runs unit, integration, bench-smoke and doc tests.
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

# A C compiler links the test binaries (ring-free build, but cc is still
# the linker driver).
apt_install cc:gcc

# Unit tests, the integration binary, and each bench once in test mode.
cargo test --all-targets
# Examples in doc comments.
cargo test --doc
