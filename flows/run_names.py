"""Flow run names a person can read in the Prefect UI and in ``prefect flow-run ls``: what
the run is about (a batch id, a data file) when it starts, and the model version it made or
used once that is known, instead of Prefect's random two words.

    score-<batch id or data file>      -> score-<batch id>-<model>-v<version>
    score-<batch id>-partitions           (its subflow, which scores the partitions)
    train-<data file>                  -> train-<model>-v<version>
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-")[:60] or "default"


def _parameters() -> dict:
    from prefect.runtime import flow_run

    return dict(flow_run.parameters or {})


def score_run_name() -> str:
    """The score flow's name at start: its batch id, else the file or folder it scores."""
    params = _parameters()
    if params.get("batch_id"):
        return f"score-{_slug(params['batch_id'])}"
    data = params.get("data_path") or _configured(params, "score_path")
    return f"score-{_slug(Path(data).name)}"


def partitions_run_name() -> str:
    """The score flow's subflow: its batch id, read from the staging folder
    (``.<batch id>.staging``, vae_core.steps.batch.staging_dir) it writes to."""
    staging = Path(str(_parameters().get("staging", ""))).name
    return f"score-{_slug(staging.removeprefix('.').removesuffix('.staging'))}-partitions"


def train_run_name() -> str:
    """The train flow's name at start: the file or folder it trains on."""
    params = _parameters()
    data = params.get("data_path") or _configured(params, "train_path")
    return f"train-{_slug(Path(data).name)}"


def _configured(params: dict, key: str) -> str:
    """The config's ``data.<key>`` (the file a run without ``data_path`` reads), else the key:
    a name never fails a run."""
    from vae_core.foundations.config import load_config

    try:
        return getattr(load_config(params.get("config_path", "mlflow.yml")).data, key)
    except Exception:  # an unreadable config fails the run itself, with its own message
        return key


def rename_run(name: str) -> None:
    """Rename the running flow run (``name``, slugged); a failure to rename is logged and
    never fails the run (the work is done by then)."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=_slug(name))
    except Exception as exc:  # a name is not worth failing a finished run
        with contextlib.suppress(Exception):
            get_run_logger().warning("could not rename the flow run to %s: %s", name, exc)
