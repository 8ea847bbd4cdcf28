"""What the ``vae-anomaly`` commands share: the Typer app, the console, common options, the
one-line user errors, and loading a model to score with. ``vae_core.cli`` and
``vae_core.cli.latent`` both add commands to ``app``; neither imports the other's commands
back (``cli`` imports ``cli_latent`` once, to register them).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Anomaly detection with a variational auto-encoder.",
)
console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="mlflow.yml to read.")]
ModelNameOpt = Annotated[
    str | None,
    typer.Option("--registered-model", help="Registered model name (tracking.registered_model)."),
]
ExperimentOpt = Annotated[
    str | None, typer.Option("--experiment", help="MLflow experiment (tracking.experiment).")
]


def _tracking_overrides(registered_model: str | None, experiment: str | None) -> dict:
    """Config overrides for the tracking section from the command line (a flag wins)."""
    given = {"registered_model": registered_model, "experiment": experiment}
    return {k: v for k, v in given.items() if v is not None}


def _fail(message: str) -> None:
    # escaped: a message quoting a user's value ("column [bold]") must print as written
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _user_errors(fn):
    """Turn the exceptions that mean 'bad input' into one line and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError, ConnectionError) as exc:
            _fail(str(exc).strip("'\""))
        except OSError as exc:  # a full disk or quota is the machine's state, not a bug
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _fail(str(exc))

    return wrapper


def _scoring_model(model: str, cfg):
    """(detector, RegisteredDetector or None) for a saved folder or a models:/ URI."""
    if model.startswith("models:/"):
        from vae_core.tracking import registry

        registered = registry.load_registered(registry.TrackingTarget.from_config(cfg), model)
        return registered.detector.set_params(missing=cfg.scoring.missing), registered
    from vae_core.estimator.detector import VAEDetector

    return VAEDetector.load(Path(model)).set_params(missing=cfg.scoring.missing), None


def _as_recorded(cfg, record: dict, sections: tuple[str, ...] = ("data", "split", "images")):
    """(``cfg`` with the data, split and images settings a version's training run recorded,
    its data source): ``promote`` without --data scores both models on the held-out rows
    of the file the challenger was trained on, split as it was, whatever the current config
    says. A run that recorded no source (older versions) keeps the config's own data."""
    from vae_core.foundations import config as c
    from vae_core.tracking import registry

    source = record.get("source")
    if not source:
        return cfg, cfg.path(cfg.data.train_path)
    path = Path(source)
    if not path.exists():
        raise ValueError(
            f"version {record['version']} was trained on {source}, which is not here: give "
            "--data (with --label-column and --id-column for a table) to promote on other rows"
        )

    models = {"data": c.DataConfig, "split": c.SplitConfig, "images": c.ImagesConfig}
    models |= {"model": c.ModelConfig, "training": c.TrainingConfig}
    update = {}
    for section in sections:
        model = models[section]
        recorded = {
            key.partition(".")[2]: registry.setting_value(value)
            for key, value in record.get("params", record["settings"]).items()
            if key.startswith(f"{section}.") and key.partition(".")[2] in model.model_fields
        }
        update[section] = model(**(getattr(cfg, section).model_dump() | recorded))
    typer.echo(f"held-out rows of {path}, as version {record['version']} was trained")
    return cfg.model_copy(update=update), path
