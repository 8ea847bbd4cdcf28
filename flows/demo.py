"""`make demo`: the whole path on the embedded default, through the Prefect flows.

train (ingest -> split -> fit -> calibrate -> evaluate -> register @challenger -> promotion
gate) -> score a batch with models:/vae-anomaly@champion -> print where everything is.
Runs on a temporary local Prefect API (state in $PREFECT_HOME) and the sqlite MLflow store of
mlflow.yml; a second run trains version N+1 and puts it through the gate.
"""

from __future__ import annotations

from pathlib import Path

from flows.score import score
from flows.train import train
from vae_core.config import load_config
from vae_core.registry import TrackingTarget


def main(config_path: str = "mlflow.yml") -> None:
    cfg = load_config(config_path)
    trained = train(config_path=config_path, out_dir="runs/demo")
    scored = score(batch_id="demo", config_path=config_path)
    target = TrackingTarget.from_config(cfg)
    print(Path("runs/demo/report/report.md").read_text())
    print(
        "\n".join(
            [
                "",
                f"model version:  {cfg.tracking.registered_model} v{trained['version']} "
                f"(promoted to champion: {trained['promoted']})",
                "model, report:  runs/demo/model, runs/demo/report/report.md",
                f"scores:         {scored['output']} ({scored['rows']} rows, {scored['flagged']} "
                f"flagged) by {cfg.tracking.registered_model} v{scored['model_version']}",
                f"MLflow:         {target.uri} (artifacts in {cfg.tracking.artifact_location}/)",
                f"browse it:      .venv/bin/{target.ui_command()}",
                "                then open http://127.0.0.1:5000 (Models > vae-anomaly to review)",
                "Prefect state:  flow runs in the local API database under $PREFECT_HOME",
            ]
        )
    )


if __name__ == "__main__":
    main()
