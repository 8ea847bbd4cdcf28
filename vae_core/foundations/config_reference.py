"""The configuration reference, generated from the typed config so that it cannot drift.

``reference_markdown(mlflow_yml)`` gives one Markdown table per section of
``PipelineConfig``: every key with its type, default and limits as the pydantic models
declare them, and what it means as the comments of the shipped ``mlflow.yml`` say (the one
place each key is explained). The documentation site renders it on its configuration page
(``docs/hooks/config_reference.py``); ``sections()`` lists the keys for the tests.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from vae_core.foundations.calibrate import CalibrationPolicy
from vae_core.foundations.config import PipelineConfig

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


def sections() -> dict[str, type[BaseModel]]:
    """{section name: its model}, in the order of ``PipelineConfig``."""
    return {
        name: field.annotation
        for name, field in PipelineConfig.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


def yaml_comments(text: str) -> dict[str, str]:
    """{"section" or "section.key": its comment} from a commented config file: a key's
    trailing comment and the comment-only lines below it (continuations), joined; comments
    on deeper keys (``calibration.policy.name``) go to the key above them."""
    found: dict[str, list[str]] = {}
    current = None
    section = None
    for line in text.splitlines():
        body, _, comment = line.partition("#")
        match = _KEY.match(body.rstrip())
        if match:
            depth = len(match["indent"])
            if depth == 0:
                section = current = match["key"]
            elif depth == 2 and section:
                current = f"{section}.{match['key']}"
            # deeper keys continue the key above them
        elif body.strip():
            continue
        elif not line.startswith(" "):
            current = None  # a comment at the margin: the file's own notes
            continue
        if current and comment.strip():
            found.setdefault(current, []).append(comment.strip())
    return {key: " ".join(parts) for key, parts in found.items()}


def type_name(annotation) -> str:
    """A type as a reader of the YAML file needs it: ``int``, ``a | b``, ``list of str``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(named) + (" \\| null" if type(None) in args else "")
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (list, tuple):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        if origin is tuple:
            return f"[{', '.join(type_name(a) for a in args)}]"
        return f"list of {type_name(args[0])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`" if value is not None else "`null`"


def _limits(field: FieldInfo) -> str:
    words = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                words.append(f"{sign} {getattr(item, attr):g}")
        if getattr(item, "pattern", None):
            words.append(f"matches `{item.pattern}`")
    return ", ".join(words)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _section_table(name: str, model: type[BaseModel], comments: dict[str, str]) -> list[str]:
    doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
    lines = [f"### `{name}`", "", doc]
    if comments.get(name):
        lines += ["", _cell(comments[name])]
    lines += ["", "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, field in model.model_fields.items():
        meaning = comments.get(f"{name}.{key}", "")
        limits = _limits(field)
        kind = type_name(field.annotation) + (f", {limits}" if limits else "")
        lines.append(f"| `{key}` | {kind} | {_default(field)} | {_cell(meaning)} |")
    return [*lines, ""]


def _policies() -> list[str]:
    union = typing.get_args(CalibrationPolicy)[0]
    lines = [
        "### `calibration.policy`",
        "",
        "One of these, chosen by `name`; the other keys are the policy's own.",
        "",
        "| `name` | what it does | keys (default) |",
        "|---|---|---|",
    ]
    for policy in typing.get_args(union):
        fields = policy.model_fields
        keys = ", ".join(
            f"`{k}` ({'required' if f.is_required() else json.dumps(f.get_default())})"
            for k, f in fields.items()
            if k != "name"
        )
        doc = " ".join((policy.__doc__ or "").split())
        lines.append(f"| `{fields['name'].default}` | {_cell(doc)} | {keys} |")
    return [*lines, ""]


def reference_markdown(mlflow_yml: str | Path | None = None) -> str:
    """Every section's table (and the calibration policies), as Markdown. ``mlflow_yml``:
    the commented config whose comments explain the keys (none: the tables without them)."""
    comments = yaml_comments(Path(mlflow_yml).read_text()) if mlflow_yml else {}
    lines: list[str] = []
    for name, model in sections().items():
        lines += _section_table(name, model, comments)
        if name == "calibration":
            lines += _policies()
    return "\n".join(lines)
