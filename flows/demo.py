"""`make demo` / `make demo-images`: the whole path on an embedded default, through the flows.

train (ingest -> split -> fit -> calibrate -> evaluate -> register @challenger -> promotion
gate) -> score a batch with models:/NAME@champion -> print where everything is.
Runs on a temporary local Prefect API (state in $PREFECT_HOME) and the sqlite MLflow store of
the config; a second run trains version N+1 and puts it through the gate. It ends by saying
in words what the evaluation's numbers mean (``vae_core.evaluation.meaning``), with
absolute paths, and how to open the runs in the MLflow and Prefect UIs (``where_to_look``).

    python -m flows.demo                              # tables: data/cardio.csv, mlflow.yml
    python -m flows.demo --config configs/mnist.yml   # images: data/mnist
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.score import score
from flows.train import train
from vae_core.evaluation.meaning import meaning_lines
from vae_core.foundations.config import load_config
from vae_core.tracking.registry import TrackingTarget


def main(config_path: str = "mlflow.yml") -> None:
    cfg = load_config(config_path)
    images = cfg.data.kind == "images"
    out = Path("runs/demo-images" if images else "runs/demo").resolve()
    trained = train(config_path=config_path, out_dir=str(out))
    target = TrackingTarget.from_config(cfg)
    name = cfg.tracking.registered_model
    scored = score(batch_id="demo", config_path=config_path, model_uri=_scoring_uri(cfg, trained))
    print((out / "report" / "report.md").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    lines = [*meaning_lines(report, cfg.calibration.policy), ""]
    lines += [
        f"model version:  {name} v{trained['version']} "
        f"(promoted to champion: {trained['promoted']})",
        f"promotion gate: {trained.get('promotion', 'not run')}",
        f"model, report:  {_abs(out / 'model')}, {_abs(out / 'report' / 'report.md')}",
        f"scores:         {_abs(scored['output'])} ({scored['rows']} rows, {scored['flagged']} "
        f"flagged) by {name} v{scored['model_version']}",
    ]
    if images:
        review = json.loads((out / "review" / "review.json").read_text())
        if review["reconstruction_retrieval"] is not None:
            lines.append(
                f"reconstructions: nearer to their own image than to any other for "
                f"{review['reconstruction_retrieval']:.0%} of the "
                f"{review['normal_test_images']} normal test images (review/review.json)"
            )
        lines += [
            f"anomaly maps:   {_abs(scored['maps'])}/ (top {cfg.images.top_maps} of the batch; "
            "path per image in the scores' map_path)",
            f"review grids:   {_abs(out / 'review')}/ (prior_samples.png, reconstructions.png, "
            "interpolations.png, maps/ of the test split)",
        ]
    latent = json.loads((out / "review" / "latent.json").read_text())
    realism = latent["sample_realism_auc"]
    told = "" if realism is None else f"; samples vs real rows: ROC-AUC {realism:.2f} (0.5: alike)"
    lines.append(
        f"latent space:   {_abs(out / 'review' / 'latent_map.png')} (test posterior means on "
        "their two directions of most variance)" + told
    )
    lines += [
        f"MLflow store:   {target.uri} "
        f"(artifacts in {_abs(cfg.path(cfg.tracking.artifact_location))}/)",
        "",
        *where_to_look(target.ui_command(), name, cfg.tracking.experiment, _prefect_home()),
    ]
    print("\n".join(lines))


def _scoring_uri(cfg, trained: dict) -> str | None:
    """The champion (None: the score flow's default); when the gate refused the very first
    version there is none, and the demo scores with that version to show the scoring path."""
    from vae_core.tracking import registry

    target = registry.TrackingTarget.from_config(cfg)
    if registry.champion_version(target) is not None:
        return None
    print(f"no champion (the gate refused v{trained['version']}): the demo scores with it")
    return f"models:/{cfg.tracking.registered_model}/{trained['version']}"


def where_to_look(ui_command: str, model_name: str, experiment: str, prefect_home) -> list[str]:
    """How to open the demo's runs: the MLflow UI (``ui_command``, from
    ``TrackingTarget.ui_command``) and the Prefect UI on the demo's ``prefect_home``."""
    if ui_command.startswith("mlflow "):  # a local store: the mlflow installed beside Python
        ui_command = _command("mlflow") + ui_command.removeprefix("mlflow")
    return [
        "Open the runs:",
        f"  MLflow UI:   {ui_command}",
        f"               then http://127.0.0.1:5000: Experiments > {experiment} (the training "
        f"and scoring runs), Models > {model_name} (versions, @champion and the review)",
        f"  Prefect UI:  PREFECT_HOME={_abs(prefect_home)} {_command('prefect')} server start "
        "--host 127.0.0.1 --port 4200 --analytics-off",
        "               then http://127.0.0.1:4200/runs (the demo's train and score flow runs, "
        "their logs and artifacts)",
    ]


def _prefect_home() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value())


def _command(name: str) -> str:
    """``name`` installed beside the running Python (``.venv/bin/mlflow``), relative to the
    working directory when below it; else plain ``name``."""
    script = Path(sys.executable).parent / name
    if not script.exists():
        return name
    return str(script.relative_to(Path.cwd())) if script.is_relative_to(Path.cwd()) else str(script)


def _abs(path) -> str:
    """``path`` resolved to an absolute path, as printed for the user to open."""
    return str(Path(path).expanduser().resolve())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train, promote and score on a sample.")
    parser.add_argument("--config", default="mlflow.yml", help="pipeline config file")
    main(parser.parse_args().config)
