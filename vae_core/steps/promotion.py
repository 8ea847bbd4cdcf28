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

What a reviewer reads of a training run (``review_description``, ``training_run_note``,
``RunRecord``) is ``vae_core.steps.run_notes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from vae_core.estimator.detector import VAEDetector
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
