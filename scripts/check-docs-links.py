#!/usr/bin/env python3
"""Checks the links of the built book (docs/book/) and of README.md.

mdBook has no link checker of its own, and mdbook-linkcheck is another
crate to compile on every CI run, so this is a small Python 3 script on
the standard library (html.parser), run by scripts/docs.sh after
`mdbook build docs`:

- every HTML page under BOOK_DIR: each relative `href`/`src` (a, link,
  img, script, ...) must name an existing file or folder, and each
  `#fragment` an element `id` (or `<a name>`) of the page it points to;
- each Markdown file given after it (README.md): each relative link must
  name an existing file or folder (from the Markdown file's folder); a
  fragment into a book chapter (docs/src/X.md#id) is looked up in the
  built page (docs/book/X.html), one into any other Markdown file among
  that file's headings (ids as GitHub and mdBook make them).

External links (http:, https:, mailto: ...) are not fetched (CI has no
network): they are only counted. Exits 1 naming each broken link as
`file: link (why)`.

Usage: check-docs-links.py BOOK_DIR [MARKDOWN_FILE...]
"""

import html.parser
import os
import re
import sys
import urllib.parse

SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
LINK_ATTRS = {"href", "src", "xlink:href"}
# mdBook's own pages that are not chapters and use site-absolute links.
SKIP_PAGES = {"404.html"}


class Page(html.parser.HTMLParser):
    """An HTML page's ids and links."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            elif name in LINK_ATTRS:
                self.links.append(value)

    handle_startendtag = handle_starttag


_pages = {}


def page(path):
    """The parsed page at `path` (cached)."""
    if path not in _pages:
        p = Page()
        with open(path, encoding="utf-8") as f:
            p.feed(f.read())
        p.close()
        _pages[path] = p
    return _pages[path]


def heading_id(text):
    """A heading's id as mdBook (and, but for rare cases, GitHub) makes it."""
    return "".join(
        "-" if ch.isspace() else ch
        for ch in text.strip().lower()
        if ch.isalnum() or ch in "_-" or ch.isspace()
    )


FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_ids(path):
    """The heading ids of a Markdown file (duplicates get -1, -2, ...)."""
    ids = set()
    for _, line in outside_code(path):
        h = HEADING.match(line)
        if h:
            base = heading_id(h.group(2))
            new, n = base, 0
            while new in ids:
                n += 1
                new = f"{base}-{n}"
            ids.add(new)
    return ids


def outside_code(path):
    """(line number, line) of each line of a Markdown file outside fenced
    code blocks."""
    fence = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            m = FENCE.match(line)
            if fence:
                if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                    fence = None
                continue
            if m:
                fence = m.group(1)
                continue
            yield number, line


def markdown_links(path):
    """(line number, target) of each inline link and reference definition
    of a Markdown file, outside code."""
    out = []
    for number, line in outside_code(path):
        text = re.sub(r"`+[^`]*`+", "", line)
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
            out.append((number, target))
        ref = re.match(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", text)
        if ref:
            out.append((number, ref.group(1)))
    return out


class Checker:
    def __init__(self, book, repo):
        self.book = os.path.abspath(book)
        self.book_src = os.path.join(os.path.dirname(self.book), "src")
        self.repo = repo
        self.broken = []
        self.external = 0
        self.checked = 0

    def fail(self, where, link, why):
        self.broken.append(f"{where}: {link} ({why})")

    def fragment_ids(self, target):
        """The ids a fragment into `target` may name, or None when the
        target's kind has none we can check."""
        if target.endswith((".html", ".htm")):
            return page(target).ids
        if target.endswith(".md"):
            src = os.path.relpath(target, self.book_src)
            if not src.startswith(".."):
                built = os.path.join(self.book, src[: -len(".md")] + ".html")
                if not os.path.isfile(built):
                    return set()
                return page(built).ids
            return markdown_ids(target)
        return None

    def check(self, where, base_dir, own_ids, link):
        """One link found in `where` (relative links from `base_dir`)."""
        if SCHEME.match(link) or link.startswith("//"):
            self.external += 1
            return
        self.checked += 1
        parsed = urllib.parse.urlsplit(link)
        path = urllib.parse.unquote(parsed.path)
        fragment = urllib.parse.unquote(parsed.fragment)
        if not path:
            target = None
            ids = own_ids
        else:
            if path.startswith("/"):
                self.fail(where, link, "absolute path: the book must work from any folder")
                return
            target = os.path.normpath(os.path.join(base_dir, path))
            if not os.path.exists(target):
                self.fail(where, link, "no such file")
                return
            if not fragment:
                return
            if os.path.isdir(target):
                self.fail(where, link, "fragment into a folder")
                return
            ids = self.fragment_ids(target)
            if ids is None:
                self.fail(where, link, "fragment into a file that has no ids")
                return
        if fragment and fragment not in ids:
            self.fail(where, link, "no such id" + (f" in {os.path.relpath(target, self.repo)}" if target else ""))

    def check_book(self):
        pages = 0
        for folder, _, files in sorted(os.walk(self.book)):
            for name in sorted(files):
                if not name.endswith(".html") or (folder == self.book and name in SKIP_PAGES):
                    continue
                path = os.path.join(folder, name)
                pages += 1
                p = page(path)
                where = os.path.relpath(path, self.repo)
                for link in p.links:
                    self.check(where, folder, p.ids, link)
        return pages

    def check_markdown(self, path):
        path = os.path.abspath(path)
        ids = markdown_ids(path)
        for number, link in markdown_links(path):
            self.check(f"{os.path.relpath(path, self.repo)}:{number}", os.path.dirname(path), ids, link)


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 64
    book = argv[1]
    if not os.path.isfile(os.path.join(book, "index.html")):
        print(f"check-docs-links: {book}/index.html missing: build the book first", file=sys.stderr)
        return 1
    checker = Checker(book, os.getcwd())
    pages = checker.check_book()
    for md in argv[2:]:
        checker.check_markdown(md)
    if checker.broken:
        for line in checker.broken:
            print(f"broken link: {line}", file=sys.stderr)
        print(f"check-docs-links: {len(checker.broken)} broken link(s)", file=sys.stderr)
        return 1
    print(
        f"check-docs-links: {pages} pages and {len(argv) - 2} Markdown file(s): "
        f"{checker.checked} relative links ok, {checker.external} external links not fetched",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
