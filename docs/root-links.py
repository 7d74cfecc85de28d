#!/usr/bin/env python3
"""mdBook preprocessor: links in text written for the repository's root.

Two chapters are files at the root pulled in with {{#include}}: the
introduction (README.md's opening, set-up and quick start) and the
benchmarks (BENCHMARKS.md, which stays at the root). Their relative links
are written from the root (`src/net/gate.rs`, `docs/src/rlqs.md#...`), so
from a page in docs/book/ they would point nowhere. For the chapters named
in book.toml (`[preprocessor.root-links] chapters`, paths under src/), this
rewrites every relative Markdown link target as seen from the chapter:
`docs/src/rlqs.md#x` becomes `rlqs.md#x` (mdBook then makes it
`rlqs.html#x`), `src/net/gate.rs` becomes `../../src/net/gate.rs`.
Fragment-only links, links with a scheme (`https:`) and absolute paths are
left alone, and so is anything in code (fenced blocks, inline code).
`root` in the same table is the repository's root, relative to the book.

mdBook runs it after its `links` preprocessor (book.toml: `after`), as
`python3 root-links.py supports RENDERER` (exit 0: any renderer), then
with the `[context, book]` JSON on stdin, expecting the book on stdout.
Python 3 standard library only.
"""

import json
import os
import posixpath
import re
import sys

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_LINK = re.compile(r"(\]\(\s*)([^)\s]+)")
REF_DEF = re.compile(r"^( {0,3}\[[^\]]+\]:\s*)(\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def rewrite_target(target, base):
    """`target`, written from the repository's root, as seen from `base`
    (the chapter's folder, relative to the root)."""
    if target.startswith(("#", "/", "<")) or SCHEME.match(target):
        return target
    path, hash_, fragment = target.partition("#")
    if not path:
        return target
    new = posixpath.relpath(posixpath.normpath(path), base)
    if path.endswith("/") and not new.endswith("/"):
        new += "/"
    return new + hash_ + fragment


def rewrite_text(text, base):
    """Rewrites the links of one line, outside inline code spans."""
    parts = re.split(r"(`+[^`]*`+)", text)
    for i in range(0, len(parts), 2):
        parts[i] = INLINE_LINK.sub(lambda m: m.group(1) + rewrite_target(m.group(2), base), parts[i])
    return "".join(parts)


def rewrite(content, base):
    out = []
    fence = None
    for line in content.split("\n"):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append(line)
            continue
        if m:
            fence = m.group(1)
            out.append(line)
            continue
        line = REF_DEF.sub(lambda m: m.group(1) + rewrite_target(m.group(2), base), line)
        out.append(rewrite_text(line, base))
    return "\n".join(out)


def walk(items, chapters, src, root):
    for item in items:
        chapter = item.get("Chapter") if isinstance(item, dict) else None
        if not chapter:
            continue
        path = chapter.get("source_path") or chapter.get("path")
        if path in chapters:
            folder = os.path.dirname(os.path.join(src, path))
            base = os.path.relpath(folder, root).replace(os.sep, "/")
            chapter["content"] = rewrite(chapter["content"], base)
        walk(chapter.get("sub_items", []), chapters, src, root)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "supports":
        return 0
    context, book = json.load(sys.stdin)
    book_root = context["root"]
    config = context["config"]
    table = config.get("preprocessor", {}).get("root-links", {})
    root = os.path.normpath(os.path.join(book_root, table.get("root", "..")))
    src = os.path.join(book_root, config.get("book", {}).get("src", "src"))
    walk(book.get("items", book.get("sections", [])), set(table.get("chapters", [])), src, root)
    json.dump(book, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
