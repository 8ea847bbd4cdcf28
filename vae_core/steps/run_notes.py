"""What a reviewer reads of a training run, as pure functions on plain data (no MLflow:
``registry`` wires them): ``review_description``, the Markdown on a new model version, from
the training run's parameters, tags and metrics (``RunRecord``), with ``data_changes`` naming
the columns added, removed or of another kind against the champion's; ``training_run_note``,
the training run's own description; ``training_fingerprint``, which names the training a run
did (its settings and data), so that a rerun registration can tell the version an interrupted
attempt left unfinished from a new model. The gate itself is ``vae_core.steps.promotion``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from vae_core.evaluation.report_record import METRIC_LABELS, baseline_sentence


@dataclass(frozen=True)
class RunRecord:
    """What a training run recorded: parameters, tags and final metrics."""

    run_id: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    schema: dict | None = None  # its feature_schema.json (columns and kinds), when read


# What makes two training runs the same training: every setting (the run's parameters) and
# the data's fingerprint. Not the code commit: a rerun after a fix is still a rerun of that
# training, and the version left unfinished by the first attempt is replaced all the same.
_TRAINING_IDENTITY_TAGS = ("data.sha256", "data.rows", "data.columns")


def training_fingerprint(run: RunRecord) -> str:
    """16 hex digits of SHA-256 over a training run's settings and data fingerprint: equal
    for two runs of the same training (a rerun), different when a setting or the data
    changed. Registration keys its resume and clean-up on it (``registry.register_challenger``)."""
    identity = {
        "params": dict(sorted(run.params.items())),
        "data": {k: run.tags.get(k, "") for k in _TRAINING_IDENTITY_TAGS},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def review_description(
    name: str, version: str, run: RunRecord, champion: str | None, champion_run: RunRecord | None
) -> str:
    """Markdown for the reviewer of a new version: data, settings, the threshold and why,
    test metrics with intervals, what changed against the champion, and the code version.
    Ends with a "Promotion log" heading that decisions append lines under."""
    t = run.tags
    sections = [
        f"## Review of {name} version {version}",  # aliases move; the UI shows them
        _data_section(run),
        _settings_section(run),
        _threshold_section(run),
        _metrics_section(run),
        _latent_section(run),
        _changes_section(run, champion, champion_run),
        f"**Code**: vae_core {t.get('code.version', '?')}, commit "
        f"`{t.get('code.git_commit', 'unknown')}`; training run `{run.run_id}`.",
        "**Promotion log**",
    ]
    return "\n\n".join(sections) + "\n"


def _latent_section(run: RunRecord) -> str:
    """What the review files show of the latent space, with the numbers the run logged."""
    m = run.metrics
    shares = [m.get(f"review_latent_variance_share_{i}") for i in (1, 2)]
    text = "**Latent space** (`review/latent_map.png`): the test rows' posterior means"
    if shares[0] is not None:
        second = f" and {shares[1]:.0%}" if shares[1] is not None else ""
        text += f" on their two directions of most variance ({shares[0]:.0%}{second} of it)"
    text += ", coloured by score, known anomalies circled."
    if m.get("review_reconstruction_retrieval") is not None:
        text += (
            f" Reconstructions follow their input: {m['review_reconstruction_retrieval']:.0%} "
            "of the normal test images are nearer to their own reconstruction than to any "
            "other's (`review/reconstructions.png`; paths between images in "
            "`review/interpolations.png`)."
        )
    if m.get("review_sample_realism_auc") is not None:
        text += (
            f" Sample realism: a classifier tells the model's samples from held-out rows with "
            f"ROC-AUC {m['review_sample_realism_auc']:.2f} (0.5: indistinguishable; columns "
            "of whole numbers or codes are told apart from Gaussian draws at once)."
        )
    return text


def _data_section(run: RunRecord) -> str:
    t = run.tags
    label = t.get("data.label_column")
    labels = f"labels `{label}` ({t.get('data.anomalies')} anomalies)" if label else "no labels"
    shape = f"{t.get('data.rows')} rows x {t.get('data.columns')} feature columns"
    if t.get("data.kind") == "images":
        shape = f"{t.get('data.rows')} images of {t.get('data.image_shape')} pixels"
        if t.get("data.skipped", "0") != "0":
            shape += f" ({t['data.skipped']} unreadable files skipped: data/skipped_images.csv)"
    return (
        f"**Data**: `{t.get('data.source')}`: {shape}, {labels}; sha256 "
        f"`{t.get('data.sha256', '')[:16]}`. Splits: train {t.get('split.train_rows')}, "
        f"calibration {t.get('split.calibration_rows')}, test {t.get('split.test_rows')} rows "
        f"(seed {run.params.get('split.seed')}); the model was trained on none of the "
        "held-out rows." + _left_out_words(t)
    )


def _left_out_words(tags: dict) -> str:
    n = tags.get("split.left_out_confirmed")
    if not n:
        return ""
    return f" {n} rows that reviewers confirmed as anomalies were left out of training."


def _settings_section(run: RunRecord) -> str:
    shown = [k for k in sorted(run.params) if k.startswith(("model.", "training."))]
    pairs = ", ".join(f"{k.split('.', 1)[1]}={run.params[k]}" for k in shown)
    m = run.metrics
    return (
        f"**Settings**: {pairs}. Trained {_fmt(m.get('epochs_trained'))} epochs "
        f"(best {_fmt(m.get('best_epoch'))}). Every setting is a parameter of the run."
    )


def _threshold_section(run: RunRecord) -> str:
    t = run.tags
    anomalies = t.get("calibration.anomalies")
    labelled = f"{anomalies} labelled anomalies" if anomalies else "no labels"
    text = (
        f"**Threshold**: {_fmt(run.metrics.get('threshold'), 6)} nats of "
        f"`{t.get('calibration.score')}` (a row is flagged iff its score is strictly greater). "
        f"Why this value: policy `{t.get('calibration.policy')}` {t.get('calibration.params')}"
        f", method `{t.get('calibration.method')}`, on {t.get('calibration.rows')} calibration "
        f"rows ({labelled}) the model was not trained on."
    )
    if t.get("calibration.fallback_reason"):
        text += f" **Fallback**: {t['calibration.fallback_reason']}."
    return text


def _metrics_section(run: RunRecord) -> str:
    t, m = run.tags, run.metrics
    level = f"{float(t.get('test.confidence', 0.95)):.0%}"
    anomalies = f"{t['test.anomalies']} anomalies" if t.get("test.anomalies") else "unlabelled"
    lines = [
        f"**Test metrics** on {t.get('test.rows')} test rows ({anomalies}), {level} "
        f"percentile-bootstrap intervals ({t.get('test.bootstrap')} resamples):",
        "",
        f"| metric | value | {level} CI |",
        "|---|---|---|",
    ]
    for key, label in METRIC_LABELS.items():
        if f"test_{key}" in m:
            low, high = m.get(f"test_{key}_ci_low"), m.get(f"test_{key}_ci_high")
            lines.append(f"| {label} | {_fmt(m[f'test_{key}'])} | {_fmt(low)} - {_fmt(high)} |")
    return "\n".join(lines) + _baseline_lines(m)


def _baseline_lines(m: dict) -> str:
    """The VAE beside IsolationForest on the same split, when the run logged the baseline."""
    if "baseline_iforest_roc_auc" not in m or "test_roc_auc" not in m:
        return ""
    rows = [
        f"| {METRIC_LABELS[k]} | {_fmt(m.get(f'test_{k}'))} "
        f"| {_fmt(m.get(f'baseline_iforest_{k}'))} |"
        for k in ("roc_auc", "average_precision")
    ]
    return (
        "\n\n**Against the simple thing**: IsolationForest (scikit-learn defaults) fitted on "
        "the same training split, scored on the same test rows:\n\n"
        "| metric | VAE | IsolationForest |\n|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        + baseline_sentence(m["test_roc_auc"], m["baseline_iforest_roc_auc"])
    )


_COMPARED_METRICS = ("test_roc_auc", "test_average_precision", "test_flagged_share", "threshold")


def _changes_section(run: RunRecord, champion: str | None, old: RunRecord | None) -> str:
    if champion is None or old is None:
        return "**Against the champion**: there is no champion yet; this would be the first."
    keys = sorted(set(run.params) | set(old.params))
    changed = [k for k in keys if run.params.get(k) != old.params.get(k)]
    settings = "; ".join(
        f"`{k}` {old.params.get(k, '-')} -> {run.params.get(k, '-')}" for k in changed
    )
    lines = [
        f"**Against the champion** (version {champion}):",
        f"- Settings: {settings or 'identical'}.",
    ]
    lines.append(f"- Data: {data_changes(old, run)}.")
    code = (old.tags.get("code.git_commit"), run.tags.get("code.git_commit"))
    lines.append(f"- Code: {'unchanged' if code[0] == code[1] else f'{code[0]} -> {code[1]}'}.")
    for key in _COMPARED_METRICS:
        a, b = old.metrics.get(key), run.metrics.get(key)
        if a is not None and b is not None:
            lines.append(f"- {key}: {_fmt(a)} -> {_fmt(b)} ({b - a:+.4g}).")
    lines.append(
        "- Each run's test numbers come from its own test split; `vae-anomaly promote` scores "
        "both models on the same held-out rows."
    )
    return "\n".join(lines)


def _schema_columns(schema: dict | None) -> dict[str, str] | None:
    """Column name -> kind of a tabular feature schema; None for images or when unknown."""
    if not schema or schema.get("kind") != "tabular":
        return None
    return {str(c["name"]): str(c.get("kind", "")) for c in schema.get("columns", [])}


def _names(columns: list[str], limit: int = 12) -> str:
    shown = ", ".join(f"`{c}`" for c in columns[:limit])
    return shown + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


def data_changes(old: RunRecord, new: RunRecord) -> str:
    """How the data of ``new`` differs from that of ``old``, in words: the same table, or
    the rows before and after and the feature columns added, removed, or of another kind
    (numeric / categorical / constant), the label column and the image shape when changed."""
    if new.tags.get("data.sha256") == old.tags.get("data.sha256"):
        return "the same table (same fingerprint)"
    parts = [f"{old.tags.get('data.rows')} -> {new.tags.get('data.rows')} rows"]
    before, after = _schema_columns(old.schema), _schema_columns(new.schema)
    if before is not None and after is not None:
        added = [c for c in after if c not in before]
        removed = [c for c in before if c not in after]
        retyped = [
            f"`{c}` {before[c]} -> {after[c]}" for c in after if before.get(c, after[c]) != after[c]
        ]
        if added:
            parts.append(f"columns added: {_names(added)}")
        if removed:
            parts.append(f"columns removed: {_names(removed)}")
        if retyped:
            parts.append("kind changed: " + ", ".join(retyped))
        if not (added or removed or retyped):
            parts.append(f"the same {len(after)} columns, other values")
    label = (
        old.tags.get("data.label_column") or "none",
        new.tags.get("data.label_column") or "none",
    )
    if label[0] != label[1]:
        parts.append(f"label column `{label[0]}` -> `{label[1]}`")
    shape = (old.tags.get("data.image_shape"), new.tags.get("data.image_shape"))
    if shape[0] != shape[1]:
        parts.append(f"image shape {shape[0] or '-'} -> {shape[1] or '-'}")
    source = (old.tags.get("data.source"), new.tags.get("data.source"))
    if source[0] != source[1]:
        parts.append(f"source `{source[0]}` -> `{source[1]}`")
    return "different data: " + "; ".join(parts)


def training_run_note(run: RunRecord) -> str:
    """The training run's description (``mlflow.note.content``): what was trained on what,
    the numbers a reader looks for first, and where the rest is."""
    t, m = run.tags, run.metrics
    what = "images" if t.get("data.kind") == "images" else "rows"
    label = t.get("data.label_column")
    labels = f"labels `{label}`, {t.get('data.anomalies')} anomalies" if label else "no labels"
    auc = ""
    if "test_roc_auc" in m:
        auc = (
            f" Test ROC-AUC {_fmt(m['test_roc_auc'])} "
            f"({_fmt(m.get('test_roc_auc_ci_low'))} - {_fmt(m.get('test_roc_auc_ci_high'))})."
        )
    return (
        f"Training of a Gaussian VAE anomaly detector on `{t.get('data.source')}`: "
        f"{t.get('data.rows')} {what} ({labels}).{auc} Threshold "
        f"{_fmt(m.get('threshold'), 6)} nats (policy `{t.get('calibration.policy')}`); "
        f"{_fmt(m.get('epochs_trained'))} epochs.\n\n"
        "Where to look: `report/` (evaluation report and plots), `review/` (latent space, "
        "samples), `evaluation/top_anomalies.json`, `feature_schema.json`; every setting is a "
        "parameter, the packaged model is the logged model `model`. Once registered, the "
        "model version's description holds the review."
    )
