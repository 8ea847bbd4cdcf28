"""The outputs that a change of structure must leave bit-identical: scores, thresholds and the
registered model's outputs on the embedded cardio table and the MNIST sample, produced through
the command line and the registry as a user gets them (``vae-anomaly train``, then
``vae-anomaly score --model models:/NAME/1``, then the registered pyfunc model's ``predict``).

``tests/test_golden.py`` compares a fresh run with ``tests/data/golden.json``: one record per
machine (CPU model, torch and numpy builds), each written by this module at the commit it
records. ``python -m tests.golden_run --write`` starts the file again with this machine's record
alone: only for a change that is meant to move the numbers, said so in the commit.
``--add-machine`` adds this machine's record beside the others at a commit whose numbers are
the file's.

Each command runs in its own process with one torch thread (OMP_NUM_THREADS=1), so the
numbers do not depend on the machine's core count or load.
"""

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden.json"
CLI = [sys.executable, "-m", "vae_core.cli"]

# Short training (a few epochs): the point is the arithmetic, not the quality; fewer steps
# also keep a difference of floating-point rounding between CPUs small where the file was
# written on another machine (see machine()).
CASES = {
    "cardio": {
        "data": {
            "train_path": str(ROOT / "data" / "cardio.csv"),
            "label_column": "label",
            "id_columns": ["record_id"],
        },
        # one network: the records were written before the snapshot member existed, and the
        # arithmetic they check is the same with it (test_snapshots checks the mean)
        "training": {"epochs": 4, "snapshot_fraction": None},
        "calibration": {"bootstrap": 50},
    },
    "mnist": {
        "base": str(ROOT / "configs" / "mnist.yml"),
        "data": {
            "train_path": str(ROOT / "data" / "mnist"),
            "score_path": str(ROOT / "data" / "mnist" / "test"),
        },
        "training": {"epochs": 3, "snapshot_fraction": None},
        "calibration": {"bootstrap": 50},
        "images": {"top_maps": 2},
    },
}


def machine() -> dict:
    """What decides floating-point rounding: the CPU model, torch and numpy builds."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "torch": torch.__version__, "numpy": np.__version__}


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f8").tobytes()).hexdigest()


def _config(folder: Path, name: str) -> Path:
    case = dict(CASES[name])
    base = case.pop("base", None)
    settings = yaml.safe_load(Path(base).read_text()) if base else {}
    for section, values in case.items():
        settings.setdefault(section, {}).update(values)
    settings["tracking"] = {
        "uri": f"sqlite:///{folder / 'mlflow.db'}",
        "experiment": f"golden-{name}",
        "artifact_location": str(folder / "mlartifacts"),
        "registered_model": f"golden-{name}",
        "max_retries": 1,
    }
    settings.setdefault("scoring", {})["output_dir"] = str(folder / "scores")
    settings["scoring"]["model_cache"] = str(folder / "models")
    path = folder / f"{name}.yml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _env(folder: Path) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the config's store, not an outer test's
    env |= {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONPATH": str(ROOT),
        "HOME": str(folder),
    }
    return env


def _run(args: list[str], folder: Path) -> None:
    out = subprocess.run(
        CLI + args, cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"vae-anomaly {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")


def _registered(folder: Path, config: Path, name: str, data: str) -> dict:
    """Threshold of the training run, and the registered version's pyfunc outputs on ``data``
    (in a child process, with the config's store)."""
    code = f"""
import json, sys, mlflow, pandas as pd
from pathlib import Path
from mlflow import MlflowClient
mlflow.set_tracking_uri({f"sqlite:///{folder / 'mlflow.db'}"!r})
mv = MlflowClient().get_model_version({f"golden-{name}"!r}, "1")
threshold = MlflowClient().get_run(mv.run_id).data.metrics["threshold"]
model = mlflow.pyfunc.load_model({f"models:/golden-{name}/1"!r})
data = Path({data!r})
if data.is_dir():
    frame = pd.DataFrame({{"path": sorted(str(p) for p in data.rglob("*.png"))}})
else:
    frame = pd.read_csv(data).drop(columns=["label", "record_id"])
out = model.predict(frame)
json.dump({{"threshold": threshold, "scores": out["anomaly_score"].tolist(),
           "probability": out["anomaly_probability"].tolist()}}, sys.stdout)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        env=_env(folder),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_case(name: str, folder: Path) -> dict:
    """Train, register, score and predict one case; the numbers a restructuring keeps."""
    folder.mkdir(parents=True, exist_ok=True)
    config = _config(folder, name)
    settings = yaml.safe_load(config.read_text())
    data = settings["data"].get("score_path") or settings["data"]["train_path"]
    _run(["train", "--config", str(config), "--data", settings["data"]["train_path"],
          "--out", str(folder / "model")], folder)  # fmt: skip
    scored = folder / "scores.parquet"
    if name == "mnist":
        _run(["score", "--config", str(config), "--model", f"models:/golden-{name}/1",
              "--data", data, "--out", str(folder / "scored"), "--batch-id", "golden"],
             folder)  # fmt: skip
        scored = folder / "scored" / "golden.parquet"
    else:
        _run(["score", "--config", str(config), "--model", f"models:/golden-{name}/1",
              "--data", data, "--out", str(scored)], folder)  # fmt: skip
    frame = pd.read_parquet(scored)
    if name == "mnist":  # file order, independent of the output's row order
        frame = frame.sort_values("path", kind="stable")
    scores = frame["anomaly_score"].to_numpy(dtype="float64")
    reg = _registered(folder, config, name, data)
    return {
        "threshold": reg["threshold"],
        "scores_sha256": _digest(scores),
        "flags_sha256": _digest(frame["is_anomaly"].to_numpy(dtype="float64")),
        "predict_sha256": _digest(np.asarray(reg["scores"])),
        "probability_sha256": _digest(np.asarray(reg["probability"])),
        "scores": [float(v) for v in scores],
        "predict": [float(v) for v in reg["scores"]],
        "n_flagged": int(frame["is_anomaly"].sum()),
    }


def run_all() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: run_case(name, Path(tmp) / name) for name in CASES}


def records() -> list[dict]:
    """The golden records in ``GOLDEN``, one per machine: {"machine", "commit", "cases"}."""
    data = json.loads(GOLDEN.read_text())
    return data["records"] if "records" in data else [data]


def record_for(here: dict) -> dict | None:
    """The record written on a machine like ``here`` (CPU model, torch, numpy), or None."""
    return next((r for r in records() if r["machine"] == here), None)


def main() -> None:
    """``--write``: a change meant to move the numbers; the file keeps this machine's record
    only (the others are stale). ``--add-machine``: the numbers did not move; this machine's
    record is added beside the others (run it at the commit the file records)."""
    result = {"machine": machine(), "cases": run_all()}
    if "--write" in sys.argv or "--add-machine" in sys.argv:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        result["commit"] = commit
        kept = [] if "--write" in sys.argv else records()
        kept = [r for r in kept if r["machine"] != result["machine"]] + [result]
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({"records": kept}, indent=1) + "\n")
        print(f"wrote {GOLDEN} at {commit} for {result['machine']}")
    else:
        print(json.dumps({k: {m: v for m, v in c.items() if "sha" in m or m == "threshold"}
                          for k, c in result["cases"].items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
