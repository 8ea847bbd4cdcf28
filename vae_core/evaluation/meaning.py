"""An evaluation's numbers in words, for the person who just trained a model: what each
number measures, on how many rows, how the threshold was set, what its interval says, and
what the result suggests doing. ``vae-anomaly train`` and ``make demo`` print the same lines.
"""

from __future__ import annotations

from vae_core.evaluation.report_record import baseline_sentence

# A test false-positive rate this many times the target (and at least two false alarms) is
# called out: the threshold does not hold on the test split.
FPR_OVER_TARGET = 1.5


def meaning_lines(report: dict, policy) -> list[str]:
    """The evaluation's numbers in words.

    report : ``report.json`` as ``vae_core.evaluation.report.write_report`` writes it.
    policy : the config's calibration policy (``calibration.policy``); a target false-positive
        rate (``fpr``) is compared with what the test split shows.
    """
    m = {k: v["value"] for k, v in report["metrics"].items()}
    n, anomalies = report["n_rows"], report["n_anomalies"]
    flagged = int(m["flagged_count"])
    target = getattr(policy, "fpr", None)
    how = (
        f"to flag about {target:.0%} of the normal rows (calibration.policy {policy.name}, "
        f"fpr {target})"
        if target is not None
        else f"by calibration.policy {policy.name}"
    )
    labelled = "" if anomalies is None else f", {anomalies} of them labelled anomalies"
    share = "" if anomalies is None else f" ({anomalies / n:.1%})"
    lines = [
        f"What the numbers mean: the test split is {n} rows the model never saw{labelled}"
        f"{share}. The threshold was set on the calibration split {how}; on the test split it "
        f"flagged {flagged} rows ({m['flagged_share']:.1%}).",
    ]
    if anomalies is None:
        return [*lines, "Without labels there is no ROC-AUC, recall or precision to report."]
    if report.get("baseline"):
        b = report["baseline"]
        lines.append(baseline_sentence(m["roc_auc"], b["roc_auc"], b["method"]))
    tp, fp = int(m["tp"]), int(m["fp"])
    level = f"{report['bootstrap']['confidence']:.0%}"
    lines += [
        f"- ROC-AUC {m['roc_auc']:.3g}: the chance that an anomaly scores higher than a normal "
        "row (0.5: a coin toss, 1: every anomaly above every normal row); it does not depend "
        "on the threshold.",
        f"- Recall {m['recall']:.3g}: the share of the anomalies flagged ({tp} of {anomalies}).",
        f"- Precision {m['precision']:.3g}: the share of flagged rows that are anomalies "
        f"({tp} of {flagged}).",
        f"- False-positive rate {m['fpr']:.3g}: the share of normal rows flagged ({fp} of "
        f"{n - anomalies})" + (f", against the {target:.0%} target." if target else "."),
        f"- {level} CI: the range each number may take on another sample of this size "
        "(bootstrap of the test split); a wide one means few rows decide the number."
        + _wide_intervals(report["metrics"]),
    ]
    return lines + _verdict(m, anomalies, n - anomalies, target)


def _verdict(m: dict, anomalies: int, normal: int, target: float | None) -> list[str]:
    """What the numbers suggest, said only when they show it: a false-positive rate above the
    target on the test split, and a recall low or high."""
    said = []
    fp, tp, fpr = int(m["fp"]), int(m["tp"]), m["fpr"]
    if target is not None and fp >= 2 and fpr > FPR_OVER_TARGET * target:
        said.append(
            f"The test split's false-positive rate ({fpr:.3g}, {fp} of {normal} normal rows) "
            f"is above the {target:.0%} target the threshold was set for: this split's normal "
            f"rows score higher than the calibration split's (with {normal} normal rows, one "
            f"row moves the rate by {1 / normal:.2g}). More calibration rows, or a stricter "
            "calibration.policy fpr, bring it down."
        )
    if m["recall"] < 0.5:
        more = (
            "raise calibration.policy fpr in the config, or with labels use a policy such as "
            "target_recall"
            if target is not None
            else "choose a calibration.policy that flags more (target_recall with labels)"
        )
        said.append(
            f"The threshold flags {tp} of the {anomalies} anomalies: those that score like "
            f"normal rows are missed (low recall). To flag more, {more}."
        )
    else:
        said.append(
            f"The threshold flags {tp} of the {anomalies} anomalies ({m['recall']:.0%}) and "
            f"{fp} of the {normal} normal rows."
        )
    return said


def _wide_intervals(metrics: dict) -> str:
    wide = [
        f"{name} {metrics[name]['low']:.2g} to {metrics[name]['high']:.2g}"
        for name in ("recall", "precision")
        if metrics[name]["high"] - metrics[name]["low"] >= 0.5
    ]
    return f" Here {' and '.join(wide)}: too few rows to tell." if wide else ""


def stopping_line(epochs_run: int, best_epoch: int, max_epochs: int, patience: int) -> str:
    """Why training stopped, in words: early stopping (converged: no validation progress for
    ``patience`` epochs) or the epoch cap (``training.epochs``), which is not convergence.

    best_epoch : 1-based, the epoch whose weights were kept.
    """
    if epochs_run >= max_epochs:
        still = (
            "the validation -ELBO was still improving at the last epoch"
            if best_epoch >= max_epochs
            else f"the best epoch was {best_epoch}"
        )
        return (
            f"stopped at the epoch cap, training.epochs = {max_epochs} (not by convergence: "
            f"{still}; raise training.epochs to let early stopping decide)"
        )
    return (
        f"converged: stopped after {epochs_run} epochs, {patience} without validation "
        f"progress (training.patience); kept epoch {best_epoch}"
    )
