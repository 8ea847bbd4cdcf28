"""MkDocs hook: the site's front page is the README, so the two never differ.

``docs/index.md`` holds the marker ``<!-- readme -->``; this hook replaces it with README.md,
its links made relative to the site: ``docs/x.md`` -> ``x.md``, ``docs/x.png`` -> ``x.png``,
and a link to any other file of the repository (``data/README.md``) shown as its path, since
the site does not carry it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme -->"
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def site_links(text: str) -> str:
    """README links as the site needs them (see the module doc)."""

    def fix(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            return match.group(0)
        if target.startswith("docs/"):
            return f"{bang}[{label}]({target.removeprefix('docs/')})"
        return label if label.startswith("`") else f"`{target}`"

    return _LINK.sub(fix, text)


def on_page_markdown(markdown: str, page, config, files) -> str:  # the MkDocs hook signature
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, site_links((ROOT / "README.md").read_text()))
