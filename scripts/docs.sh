#!/usr/bin/env bash
# Builds the book (docs/: mdBook, chapters in docs/src/SUMMARY.md) into
# docs/book/ and checks its links with scripts/check-docs-links.py: every
# relative link and #fragment of the built pages, and README.md's links
# into docs/ (external links are counted, not fetched).
#
# mdBook is not in Debian: the `mdbook` on the PATH is used when it is
# version $version, else it is built once from crates.io into
# target/tools/mdbook (nothing installed system-wide): `cargo install
# --locked`, without the serve and watch features (a local server and a
# file watcher the build does not need); search stays, it costs a few
# seconds. About a minute on 2 idle cores (CPU time about 2 minutes).
#
# Open docs/book/index.html to read the book.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.5.4

is_pinned() { [ -x "$1" ] && [ "$("$1" --version 2>/dev/null)" = "mdbook v$version" ]; }

mdbook=$(command -v mdbook 2>/dev/null || true)
if [ -z "$mdbook" ] || ! is_pinned "$mdbook"; then
    mdbook="$PWD/target/tools/mdbook/bin/mdbook"
    if ! is_pinned "$mdbook"; then
        echo "docs.sh: installing mdbook $version (crates.io) into target/tools/mdbook" >&2
        cargo install --quiet --locked mdbook --version "=$version" \
            --no-default-features --features search --root target/tools/mdbook --force
    fi
fi

rm -rf docs/book
MDBOOK_LOG=warn "$mdbook" build docs
python3 scripts/check-docs-links.py docs/book README.md
