"""`make demo` / `make demo-images`: the whole path on an embedded default, through the flows.

train (ingest -> split -> fit -> calibrate -> evaluate -> register @challenger -> promotion
gate) -> score a batch with models:/NAME@champion -> print where everything is.
Runs on a temporary local Prefect API (state in $PREFECT_HOME) and the sqlite MLflow store of
the config; a second run trains version N+1 and puts it through the gate.

    python -m flows.demo                              # tables: data/cardio.csv, mlflow.yml
    python -m flows.demo --config configs/mnist.yml   # images: data/mnist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.score import score
from flows.train import train
from vae_core.config import load_config
from vae_core.registry import TrackingTarget


def main(config_path: str = "mlflow.yml") -> None:
    cfg = load_config(config_path)
    images = cfg.data.kind == "images"
    out = Path("runs/demo-images" if images else "runs/demo").resolve()
    trained = train(config_path=config_path, out_dir=str(out))
    scored = score(batch_id="demo", config_path=config_path)
    target = TrackingTarget.from_config(cfg)
    name = cfg.tracking.registered_model
    print((out / "report" / "report.md").read_text())
    lines = [
        "",
        f"model version:  {name} v{trained['version']} "
        f"(promoted to champion: {trained['promoted']})",
        f"model, report:  {_here(out / 'model')}, {_here(out / 'report' / 'report.md')}",
        f"scores:         {_here(scored['output'])} ({scored['rows']} rows, {scored['flagged']} "
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
            f"anomaly maps:   {_here(scored['maps'])}/ (top {cfg.images.top_maps} of the batch; "
            "path per image in the scores' map_path)",
            f"review grids:   {_here(out / 'review')}/ (prior_samples.png, reconstructions.png, "
            "interpolations.png, maps/ of the test split)",
        ]
    latent = json.loads((out / "review" / "latent.json").read_text())
    realism = latent["sample_realism_auc"]
    told = "" if realism is None else f"; samples vs real rows: ROC-AUC {realism:.2f} (0.5: alike)"
    lines.append(
        f"latent space:   {_here(out / 'review' / 'latent_map.png')} (test posterior means on "
        "their two directions of most variance)" + told
    )
    lines += [
        f"MLflow:         {target.uri} "
        f"(artifacts in {_here(cfg.path(cfg.tracking.artifact_location))}/)",
        f"browse it:      .venv/bin/{target.ui_command()}",
        f"                then open http://127.0.0.1:5000 (Models > {name} to review)",
        "Prefect state:  flow runs in the local API database under $PREFECT_HOME",
    ]
    print("\n".join(lines))


def _here(path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train, promote and score on a sample.")
    parser.add_argument("--config", default="mlflow.yml", help="pipeline config file")
    main(parser.parse_args().config)
