"""MkDocs hook: the site's front page is the README, so the two never differ; and a link from
any page to a file of the repository outside ``docs/`` becomes that file's path in code.

``docs/index.md`` holds the marker ``<!-- readme -->``; this hook replaces it with README.md,
its links made relative to the site: ``docs/x.md`` -> ``x.md``, ``docs/x.png`` -> ``x.png``.
A link to another file of the repository (``data/README.md`` from the README,
``../vae_core/config.py`` from a page) is shown as its path (`data/README.md`), since the site
does not carry it; a link to a file that does not exist is left alone, so that
``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARKER = "<!-- readme -->"
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _external(target: str) -> bool:
    return bool(re.match(r"^[a-z]+:|^#", target))


def _as_path(label: str, rel: str) -> str:
    return label if label.startswith("`") else f"`{rel}`"


def site_links(text: str, base: Path = ROOT) -> str:
    """Links of Markdown written in ``base`` (ROOT: the README; DOCS: a page) as the site
    needs them (see the module doc)."""

    def fix(match: re.Match) -> str:
        bang, label, target = match.groups()
        if _external(target):
            return match.group(0)
        path = (base / target.split("#", 1)[0]).resolve()
        if path.is_relative_to(DOCS):
            if base != ROOT:
                return match.group(0)  # a page's link to a page: MkDocs checks it
            rest = target[len(target.split("#", 1)[0]) :]
            return f"{bang}[{label}]({path.relative_to(DOCS).as_posix()}{rest})"
        if path.exists() and path.is_relative_to(ROOT):
            return _as_path(label, path.relative_to(ROOT).as_posix())
        return match.group(0)  # broken: --strict says so

    return _LINK.sub(fix, text)


def on_page_markdown(markdown: str, page, config, files) -> str:  # the MkDocs hook signature
    if MARKER in markdown:
        return markdown.replace(MARKER, site_links((ROOT / "README.md").read_text()))
    base = (DOCS / page.file.src_path).parent
    return site_links(markdown, base)
