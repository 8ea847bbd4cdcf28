"""MkDocs hook: the configuration reference, generated from the typed config at every build.

``docs/configuration.md`` holds the marker ``<!-- config-reference -->``; this hook replaces
it with one table per section of ``vae_core.foundations.config.PipelineConfig``: each key,
its type, its default and its limits as the pydantic models declare them, and what it means
as the comments of the shipped ``mlflow.yml`` say. Nothing is written by hand, so the page
cannot drift from the code (``tests/test_docs.py`` checks every key is there).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:  # the MkDocs hook signature
    if MARKER not in markdown:
        return markdown
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from vae_core.foundations.config_reference import reference_markdown

    return markdown.replace(MARKER, reference_markdown(ROOT / "mlflow.yml"))
