"""Review and promotion as pure functions on plain data (no MLflow: ``registry`` wires them).

The gate (``gate_checks``), decided on held-out rows both models are scored on:

* the challenger's flagged rate at its own threshold must lie in
  ``[flagged_rate_min, flagged_rate_max]``, also for the very first model: a model that flags
  far too much (or nothing) is no safe default champion, and ``--force`` exists for the
  deliberate exception;
* its ROC-AUC may fall at most ``max_roc_auc_drop`` below the champion's on the same rows.
  Without a champion, or without labels of both classes, ROC-AUC is not compared and the
  decision says so;
* IsolationForest (scikit-learn defaults, fitted on the challenger's training rows, scored on
  the same held-out rows) may be ahead of it by at most ``max_behind_baseline`` ROC-AUC; the
  decision names the baseline and both figures, or says it could not compare (no labels);
* a first model must flag at least one of the labelled held-out anomalies at its own
  threshold (recall above 0): with no champion there is nothing else to compare it with.

``review_description`` writes the Markdown a reviewer reads on a new model version, from the
training run's parameters, tags and metrics (``RunRecord``), with ``data_changes`` naming the
columns added, removed or of another kind against the champion's; ``training_run_note`` the
training run's own description; ``training_fingerprint`` names the
training a run did (its settings and data), so that a rerun registration can tell the version an
interrupted attempt left unfinished from a new model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from vae_core.estimator.detector import VAEDetector
from vae_core.evaluation.report import METRIC_LABELS
from vae_core.evaluation.report_record import baseline_sentence
from vae_core.foundations.calibrate import flag_anomalies
from vae_core.foundations.config import PromotionConfig, SplitConfig
from vae_core.steps.pipeline import Splits, isolation_forest_baseline, split_data

CHAMPION, CHALLENGER = "champion", "challenger"


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateCheck:
    """One rule of the promotion gate and how the challenger fared."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class PromotionDecision:
    """What promotion decided and why. ``outcome``: ``promoted``, ``forced`` (manual
    override, ``reason`` says why), ``rejected``, or ``unchanged`` (already champion)."""

    model_name: str
    version: str
    previous_champion: str | None
    outcome: str
    checks: tuple[GateCheck, ...] = ()
    notes: tuple[str, ...] = ()
    reason: str | None = None
    challenger_metrics: dict = field(default_factory=dict)
    champion_metrics: dict | None = None

    @property
    def promoted(self) -> bool:
        return self.outcome in ("promoted", "forced")

    @property
    def champion(self) -> str | None:
        """The champion version after the decision."""
        return self.version if self.promoted else self.previous_champion

    def summary(self) -> str:
        """One line for the console, the version's tags and its description."""
        stays = f"version {self.previous_champion}" if self.previous_champion else "unset"
        head = {
            "promoted": f"promoted to {CHAMPION}",
            "forced": f"FORCED to {CHAMPION} (manual override: {self.reason})",
            "rejected": f"not promoted; {CHAMPION} stays {stays}",
            "unchanged": f"already {CHAMPION}; nothing to do",
        }[self.outcome]
        parts = [f"version {self.version}: {head}"]
        failed = [c.detail for c in self.checks if not c.passed]
        passed = [c.detail for c in self.checks if c.passed]
        if failed:
            parts.append("failed: " + "; ".join(failed))
        if passed:
            parts.append("passed: " + "; ".join(passed))
        return ". ".join([*parts, *self.notes]) + "."


def held_out_metrics(
    det: VAEDetector,
    features: pd.DataFrame | np.ndarray,
    labels: np.ndarray | None,
    train_features=None,
    seed: int = 0,
) -> dict:
    """``rows``, ``anomalies``, ``flagged_rate`` at the detector's own threshold and, with
    labels of both classes, ``roc_auc`` of its scores (higher = more anomalous) and ``recall``
    at its threshold, else None. With ``train_features`` (the rows it was trained on) and
    labels of both classes, ``baseline_roc_auc``: IsolationForest (scikit-learn defaults,
    ``random_state=seed``) fitted on them and scored on the same held-out rows
    (``pipeline.isolation_forest_baseline``), else None.
    features : table rows, or images (n, H, W) / (n, C, H, W) for an image detector."""
    scores = det.threshold_score(features)
    usable = labels is not None and 0 < int(np.sum(labels)) < len(labels)
    flagged = flag_anomalies(scores, det.threshold_)
    baseline = None
    if usable and train_features is not None:
        baseline = isolation_forest_baseline(det, train_features, features, labels, seed)
    return {
        "rows": len(scores),
        "anomalies": None if labels is None else int(np.sum(labels)),
        "flagged_rate": float(flagged.mean()),
        "roc_auc": float(roc_auc_score(labels, scores)) if usable else None,
        "recall": float(flagged[labels == 1].mean()) if usable else None,
        "baseline_roc_auc": None if baseline is None else baseline["roc_auc"],
    }


def reviewed_metrics(det: VAEDetector, features, labels: np.ndarray) -> dict:
    """A detector on the rows reviewers judged (``labels``: their verdicts): ``rows``,
    ``flagged`` at its threshold, ``confirmed`` among those, and ``roc_auc`` of its scores
    when the verdicts hold both classes, else None."""
    scores = det.threshold_score(features)
    flagged = flag_anomalies(scores, det.threshold_)
    both = 0 < int(labels.sum()) < len(labels)
    return {
        "rows": len(labels),
        "flagged": int(flagged.sum()),
        "confirmed": int(labels[flagged].sum()),
        "roc_auc": float(roc_auc_score(labels, scores)) if both else None,
    }


@dataclass(frozen=True)
class HeldOut:
    """The ``measure`` that ``registry.promote_challenger`` hands each model to:
    ``held_out_metrics`` on these held-out rows or images (``pipeline.held_out``), with the
    IsolationForest baseline fitted on ``train_features`` for the challenger only
    (``baseline=False`` for the champion: the gate compares the challenger with it), and,
    when reviewers have judged scored rows, ``reviewed_metrics`` on them (``reviewed``:
    their rows and verdicts)."""

    features: object
    labels: np.ndarray | None = None
    train_features: object = None
    seed: int = 0
    reviewed: tuple | None = None

    def __call__(self, det: VAEDetector, *, baseline: bool = True) -> dict:
        train = self.train_features if baseline else None
        out = held_out_metrics(det, self.features, self.labels, train, self.seed)
        if self.reviewed is not None and len(self.reviewed[1]):
            out["reviewed"] = reviewed_metrics(det, *self.reviewed)
        return out

    def with_reviewed(self, rows: pd.DataFrame, labels: np.ndarray) -> HeldOut:
        """This measure, also on reviewed ``rows`` (the model's columns) and their verdicts."""
        return dataclasses.replace(self, reviewed=(rows, np.asarray(labels, dtype=np.int64)))


def measure_on(features, labels: np.ndarray | None = None, train_features=None, seed: int = 0):
    """A ``HeldOut`` measure on these held-out rows (and, for the baseline, training rows)."""
    return HeldOut(features, labels, train_features, seed)


def measure_split(data, split: SplitConfig, splits: Splits | None = None) -> HeldOut:
    """The measure ``vae-anomaly promote`` and the train flow gate with: both models on the
    test split of ``data`` (``splits``, or split again as ``split`` says, as training did),
    the baseline fitted on its training split, seeded as training seeded it."""
    splits = splits if splits is not None else split_data(data, split)
    test = splits.test
    return HeldOut(
        data.features_at(test), data.labels_at(test), data.features_at(splits.train), split.seed
    )


def gate_checks(
    gate: PromotionConfig, challenger: dict, champion: dict | None
) -> tuple[list[GateCheck], list[str]]:
    """(checks, notes) of the gate for ``held_out_metrics`` of both models (see module doc)."""
    rate, low, high = challenger["flagged_rate"], gate.flagged_rate_min, gate.flagged_rate_max
    where = "within" if low <= rate <= high else ("below" if rate < low else "above")
    detail = f"flagged rate {rate:.2%} {where} [{low:.2%}, {high:.2%}]"
    checks = [GateCheck("flagged_rate", where == "within", detail)]
    notes: list[str] = []
    if champion is None:
        checks += _first_model_checks(challenger)
        notes.append("No champion yet: ROC-AUC not compared")
    elif challenger["roc_auc"] is None or champion["roc_auc"] is None:
        notes.append("The held-out rows lack labels of both classes: ROC-AUC not compared")
    else:
        new, old = challenger["roc_auc"], champion["roc_auc"]
        allowed = gate.max_roc_auc_drop
        detail = f"ROC-AUC {new:.4f} vs champion {old:.4f} (allowed drop {allowed})"
        checks.append(GateCheck("roc_auc", old - new <= allowed + 1e-12, detail))
    checks += _baseline_checks(gate, challenger, notes)
    checks += _reviewed_checks(
        gate, challenger.get("reviewed"), (champion or {}).get("reviewed"), notes
    )
    return checks, notes


def _baseline_checks(gate: PromotionConfig, challenger: dict, notes: list[str]) -> list:
    """The challenger against IsolationForest on the same held-out rows, when both have a
    ROC-AUC there; otherwise a note that says why they could not be compared."""
    ours, theirs = challenger["roc_auc"], challenger.get("baseline_roc_auc")
    if ours is None:
        notes.append(
            "Could not compare with IsolationForest: the held-out rows lack labels of both classes"
        )
        return []
    if theirs is None:
        notes.append("Could not compare with IsolationForest: no training rows to fit it on")
        return []
    allowed = gate.max_behind_baseline
    sentence = baseline_sentence(ours, theirs).rstrip(".")
    detail = f"{sentence} (promotion.max_behind_baseline {allowed})"
    return [GateCheck("baseline", theirs - ours <= allowed + 1e-12, detail)]


def _precision(m: dict) -> str:
    if not m["flagged"]:
        return "flags none of them"
    precision = m["confirmed"] / m["flagged"]
    return f"flags {m['flagged']}, {m['confirmed']} confirmed (precision {precision:.2f})"


def _reviewed_checks(gate: PromotionConfig, ours: dict | None, theirs: dict | None, notes):
    """Both models on the rows reviewers judged: their precision at their own thresholds in
    a note, and the challenger's ROC-AUC there at most ``max_roc_auc_drop`` below the
    champion's when the verdicts hold both classes."""
    if ours is None:
        return []
    text = f"On the {ours['rows']} reviewed rows the challenger {_precision(ours)}"
    if theirs is not None:
        text += f", the champion {_precision(theirs)}"
    notes.append(text)
    if theirs is None or ours["roc_auc"] is None or theirs["roc_auc"] is None:
        return []
    new, old, allowed = ours["roc_auc"], theirs["roc_auc"], gate.max_roc_auc_drop
    detail = f"reviewed rows' ROC-AUC {new:.4f} vs champion {old:.4f} (allowed drop {allowed})"
    return [GateCheck("reviewed_roc_auc", old - new <= allowed + 1e-12, detail)]


def _first_model_checks(challenger: dict) -> list[GateCheck]:
    """A first model must flag some of the labelled held-out anomalies at its threshold."""
    recall, anomalies = challenger.get("recall"), challenger.get("anomalies")
    if recall is None or not anomalies:
        return []
    found = round(recall * anomalies)
    detail = (
        f"recall {recall:.2f} at its own threshold ({found} of the {anomalies} labelled "
        "held-out anomalies flagged)"
    )
    return [GateCheck("recall", found > 0, detail)]


def decide(
    name: str,
    version: str,
    champion: str | None,
    gate: PromotionConfig,
    challenger_metrics: dict,
    champion_metrics: dict | None,
    force_reason: str | None = None,
    data_note: str = "",
) -> PromotionDecision:
    """The decision for a challenger: the gate's verdict, or ``forced`` with a reason."""
    checks, notes = gate_checks(gate, challenger_metrics, champion_metrics)
    if data_note:
        notes.append(data_note)
    passed = all(c.passed for c in checks)
    outcome = "forced" if force_reason else ("promoted" if passed else "rejected")
    return PromotionDecision(
        name,
        version,
        champion,
        outcome,
        tuple(checks),
        tuple(notes),
        force_reason,
        challenger_metrics,
        champion_metrics,
    )


# --------------------------------------------------------------------------- review text


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
