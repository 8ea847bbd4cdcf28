"""Fingerprints and versions a run records: the data (a dataset's own ``fingerprint``,
re-exported here as ``table_fingerprint``; a scored source's ``source_digest``), the code
(``code_version``) and the settings (``settings_params``, ``scoring_settings``). No MLflow.
"""

from __future__ import annotations

import glob
import hashlib
import json
import subprocess
from pathlib import Path

import vae_core
from vae_core.data.ingest import table_fingerprint as table_fingerprint
from vae_core.foundations.config import PipelineConfig
from vae_core.kinds.choice import kind_named


def code_version() -> dict[str, str]:
    """The package version and the git commit of its checkout (``-dirty`` with edits)."""
    here = Path(vae_core.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = commit and git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    commit = (commit + "-dirty" if dirty else commit) or "unknown"
    return {"code.version": vae_core.__version__, "code.git_commit": commit}


def settings_params(cfg: PipelineConfig) -> dict[str, str]:
    """Every setting of the config but the tracking section, flattened to ``section.key``."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)

    walk("", cfg.model_dump(mode="json", exclude={"tracking", "root"}))
    return flat


def setting_value(text: str):
    """A value as ``settings_params`` logged it, back: "None" -> None, a JSON list -> a list;
    anything else stays text for the config's validation to read ("0.2", "true")."""
    if text == "None":
        return None
    if text[:1] == "[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def scoring_settings(cfg: PipelineConfig) -> dict[str, str]:
    """The settings a scoring run records as parameters: the scoring section (chunk rows,
    top features, missing values, task runner ...), the id columns and, for images, the
    image section (chunk images, top maps ...)."""
    prefixes = ("scoring.", *kind_named(cfg.data.kind).settings)
    flat = settings_params(cfg)
    return {k: v for k, v in flat.items() if k.startswith(prefixes) or k == "data.id_columns"}


def _source_files(source: str) -> list[Path]:
    """The files a scored source names: a file, the files under a folder, or a glob's."""
    if any(ch in source for ch in "*?["):
        return sorted(p for p in map(Path, glob.glob(source, recursive=True)) if p.is_file())
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path] if path.is_file() else []


def source_digest(source: str | Path) -> str:
    """16 hex digits of SHA-256 over the files of ``source`` (their names relative to it and
    their bytes, read in 1 MiB blocks: no file is held in memory whole)."""
    h = hashlib.sha256(str(Path(str(source)).name).encode())
    files = _source_files(str(source))
    root = Path(str(source)) if Path(str(source)).is_dir() else None
    for path in files:
        h.update(str(path.relative_to(root) if root else path.name).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
