"""What a scored batch reports, for a table or a folder of images: its counts, its drift (the
PSI of its scores against the calibration score deciles), its top anomalies and the files it
wrote (``BatchSummary``), and the Markdown a scoring run shows of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class StagedPart:
    """What scoring one partition produced: a staged file and its summary."""

    path: str
    rows: int = 0
    flagged: int = 0
    decile_counts: list[int] = field(default_factory=list)  # against the calibration deciles
    score_sample: list[float] = field(default_factory=list)  # up to 2,000 scores, for plots
    top: list[dict] = field(default_factory=list)  # the part's highest-scoring rows
    skipped: list[tuple[str, str]] = field(default_factory=list)  # inputs left out, (path, why)


# ---- drift -------------------------------------------------------------------------------------
def population_stability_index(counts: list[int] | np.ndarray, n_bins: int = 10) -> float:
    """PSI of scored rows across the calibration score deciles (10 equal reference shares).

    PSI = sum_i (a_i - e_i) ln(a_i / e_i), with e_i = 1/10 and a_i the share of new scores in
    decile bin i (empty bins get half a count so the sum stays finite). Common reading: < 0.1
    stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.size != n_bins or counts.sum() == 0:
        raise ValueError(f"need {n_bins} bin counts with at least one row, got {counts.tolist()}")
    actual = np.maximum(counts, 0.5) / counts.sum()
    expected = np.full(n_bins, 1.0 / n_bins)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


# ---- the batch's summary -------------------------------------------------------------------
@dataclass
class BatchSummary:
    """What a scoring run reports, for a table or a folder of images: counts, drift and the
    top anomalies of the whole batch, and the files it wrote.

    score_sample : scores to describe the distribution by (at most 2,000 per partition).
    output : the scores file; artifacts : more files a scoring run logs, {artifact folder:
        path} (images: ``anomaly_maps``, the maps folder; ``skipped``, the list of files
        left out, each only when written); skipped_files : (path, reason) of those files.
    unit : what a row is, "rows" or "images".
    """

    batch_id: str
    rows: int
    flagged: int
    threshold: float
    psi: float | None
    drift_warning: bool
    score_sample: np.ndarray
    top: pd.DataFrame
    output: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    unit: str = "rows"

    @property
    def flagged_rate(self) -> float:
        return self.flagged / self.rows if self.rows else 0.0


def summarise_batch(
    batch_id: str,
    parts: list[StagedPart],
    *,
    threshold: float,
    psi_warning: float,
    top_rows: int,
    unit: str,
) -> BatchSummary:
    """Combine the per-partition summaries: the ``top_rows`` highest scores, the inputs left
    out, and the PSI against the calibration deciles if recorded (a drift warning above
    ``psi_warning``)."""
    counts = [p.decile_counts for p in parts if p.decile_counts]
    psi = population_stability_index(np.sum(counts, axis=0)) if counts else None
    top = pd.DataFrame([row for p in parts for row in p.top])
    if len(top):
        top = top.nlargest(top_rows, "anomaly_score").reset_index(drop=True)
    return BatchSummary(
        batch_id=batch_id,
        rows=sum(p.rows for p in parts),
        flagged=sum(p.flagged for p in parts),
        threshold=float(threshold),
        psi=psi,
        drift_warning=psi is not None and psi > psi_warning,
        score_sample=np.asarray([s for p in parts for s in p.score_sample]),
        top=top,
        skipped_files=[item for p in parts for item in p.skipped],
        unit=unit,
    )


def summary_markdown(summary: BatchSummary, model: str, source: str) -> str:
    """A short Markdown summary of a scoring run, for the Prefect artifact and the logs."""
    unit = summary.unit
    lines = [
        f"# Scores for batch `{summary.batch_id}`",
        "",
        f"- Model: `{model}`; input: `{source}`; output: `{summary.output}`",
        f"- {unit.capitalize()}: {summary.rows:,}; flagged: {summary.flagged:,} "
        f"({summary.flagged_rate:.2%}) at threshold {summary.threshold:.4g} (one is flagged "
        "iff its score is greater)",
    ]
    if summary.psi is not None:
        verdict = (
            "**drift warning**: the scores no longer look like the calibration data"
            if (summary.drift_warning)
            else "no drift warning"
        )
        lines.append(f"- Score drift (PSI vs calibration deciles): {summary.psi:.3f} ({verdict})")
    if "anomaly_maps" in summary.artifacts:
        lines.append(f"- Anomaly maps: `{summary.artifacts['anomaly_maps']}`")
    return "\n".join(lines) + "\n" + skipped_markdown(summary.skipped_files)


def skipped_markdown(skipped: list[tuple[str, str]]) -> str:
    """A Markdown section listing the skipped files (path, reason); "" when none was."""
    if not skipped:
        return ""
    lines = [f"- `{path}`: {reason}" for path, reason in skipped]
    return f"\n## Skipped files ({len(skipped)})\n\n" + "\n".join(lines) + "\n"
