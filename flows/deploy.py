"""Create (or update) the deployments on a process work pool:

* ``score/nightly``: batch scoring with the champion on ``schedules.score_cron``;
* ``train/weekly``: retraining, registration and the promotion gate on ``schedules.train_cron``;
* ``feedback/reviews``: reviewers' verdicts recorded, on demand (no schedule).

The names come from ``schedules.score_deployment`` / ``train_deployment`` (configs/mnist.yml
deploys ``score/nightly-mnist`` and ``train/weekly-mnist`` beside the tabular ones).

Then the automations of the ``alerts`` section (flows/alerts.py): a notification when a batch
crosses a limit, a run of the training deployment when a batch drifts. Every step is
idempotent: a second run with the same config changes nothing (a paused automation stays
paused).

Parameters default to ``mlflow.yml``; override one run with
``prefect deployment run 'score/nightly' --param data_path=... --param batch_id=...``.

    python -m flows.deploy [--pool vae-anomaly] [--config mlflow.yml] [--paused]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow
from prefect.schedules import Cron

from flows import alerts
from vae_core.foundations.config import load_config

ROOT = Path(__file__).resolve().parents[1]
FLOWS = {  # flow -> (entrypoint, cron key, deployment-name key) in the schedules section
    "score": ("flows/score.py:score", "score_cron", "score_deployment"),
    "train": ("flows/train.py:train", "train_cron", "train_deployment"),
    # run on demand with the reviewers' file: no schedule
    "feedback": ("flows/feedback.py:feedback", None, "feedback_deployment"),
}


def deploy_all(pool: str, config_path: str = "mlflow.yml", paused: bool = False) -> list[str]:
    """Deploy the flows from this checkout (a local source: the worker must run here), then
    the alerts' automations; one line for each thing done."""
    cfg = load_config(config_path)
    config_file = str(Path(config_path).resolve())
    block_id = alerts.notification_destination(cfg)  # a wrong block: refused before any deploy
    done, ids = [], {}
    for flow_name, (entrypoint, cron_key, name_key) in FLOWS.items():
        name = getattr(cfg.schedules, name_key)
        ids[flow_name] = flow.from_source(source=str(ROOT), entrypoint=entrypoint).deploy(
            name=name,
            work_pool_name=pool,
            schedules=[Cron(getattr(cfg.schedules, cron_key), timezone=cfg.schedules.timezone)]
            if cron_key
            else [],
            parameters={"config_path": config_file},
            paused=paused,
            tags=["vae-anomaly"],
            print_next_steps=False,
            # Prefect's process-pool notice (".serve is a great way to get started"), printed
            # once per deployment: the README says to start a worker in this checkout
            ignore_warnings=True,
        )
        done.append(f"deployment {flow_name}/{name} (pool {pool})")
    return done + alerts.ensure_automations(cfg, ids["train"], block_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="vae-anomaly", help="process work pool name")
    parser.add_argument("--config", default="mlflow.yml", help="pipeline config file")
    parser.add_argument("--paused", action="store_true", help="create the schedules paused")
    args = parser.parse_args()
    try:
        done = deploy_all(args.pool, args.config, args.paused)
    except (ValueError, FileNotFoundError) as exc:  # a bad config or alerts block, named
        parser.exit(2, f"error: {exc}\n")
    for line in done:
        print(line)


if __name__ == "__main__":
    main()
