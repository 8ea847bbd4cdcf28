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

from vae_core.foundations.config import DataConfig
from vae_core.kinds.choice import kind_named

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Anomaly detection with a variational auto-encoder.",
    rich_markup_mode=None,  # plain help: rewrapped to any width, never cut at 80 columns
)
console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Pipeline config to read (default: ./mlflow.yml if there is one, else the "
        "built-in defaults, which keep MLflow in ./mlflow.db and ./mlartifacts).",
        show_default=False,
    ),
]
ModelNameOpt = Annotated[
    str | None,
    typer.Option("--registered-model", help="Registered model name (tracking.registered_model)."),
]
ExperimentOpt = Annotated[
    str | None, typer.Option("--experiment", help="MLflow experiment (tracking.experiment).")
]


def whole_short_help(typer_app: typer.Typer) -> None:
    """Give every command without a ``short_help`` its docstring's first sentence as one:
    ``--help`` then wraps it instead of cutting it to the terminal's width with "..."."""
    for info in typer_app.registered_commands:
        if info.short_help is None:
            doc = info.help or (info.callback.__doc__ if info.callback else None) or ""
            first = " ".join(doc.strip().split("\n\n")[0].split())
            info.short_help = first.split(". ")[0].rstrip(".") + "." if first else None


def tracking_overrides(registered_model: str | None, experiment: str | None) -> dict:
    """Config overrides for the tracking section from the command line (a flag wins)."""
    given = {"registered_model": registered_model, "experiment": experiment}
    return {k: v for k, v in given.items() if v is not None}


def fail(message: str) -> None:
    # escaped: a message quoting a user's value ("column [bold]") must print as written
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def error_text(exc: BaseException) -> str:
    """The message of ``exc`` as it was written. ``str(KeyError("missing column 'x'"))`` is
    its repr, in quotes of its own; stripping quotes from the ends would also cut the closing
    quote of a name inside the message, so a KeyError's own argument is taken instead."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def user_errors(fn):
    """Turn the exceptions that mean 'bad input' into one line and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        # PermissionError: a file we may not write, or a call the tracking server refused
        # (tracking.access.AccessRefused names the user, the action and the permission)
        except (ValueError, FileNotFoundError, KeyError, ConnectionError, PermissionError) as exc:
            fail(error_text(exc))
        except OSError as exc:  # a full disk or quota is the machine's state, not a bug
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            fail(str(exc))

    return wrapper


def announce_new_store(cfg) -> None:
    """Say so before a command creates a local MLflow store (a sqlite file that does not exist
    yet, and its artifact folder): from an empty folder, without an mlflow.yml, the defaults
    put them in the working directory."""
    uri = cfg.tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if db.exists():
        return
    artifacts = cfg.path(cfg.tracking.artifact_location)
    console.print(
        f"creating a new MLflow store: {escape(str(db))} and {escape(str(artifacts))}/ "
        "(tracking.uri, tracking.artifact_location; MLFLOW_TRACKING_URI or --config for "
        "another)",
        highlight=False,
        soft_wrap=True,
    )


def scoring_model(model: str, cfg):
    """(detector, RegisteredDetector or None) for a saved folder or a models:/ URI."""
    if model.startswith("models:/"):
        from vae_core.tracking import registry

        announce_new_store(cfg)
        registered = registry.load_registered(registry.TrackingTarget.from_config(cfg), model)
        return registered.detector.set_params(missing=cfg.scoring.missing), registered
    from vae_core.estimator.detector import VAEDetector

    return VAEDetector.load(Path(model)).set_params(missing=cfg.scoring.missing), None


def as_recorded(cfg, record: dict, sections: tuple[str, ...] = ("data", "split", "images")):
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


def reading(cfg, data: Path | None, label_column: str | None, id_column: list[str] | None):
    """``cfg`` with the data section for reading ``data``: the config's label, id and dropped
    columns only when ``data`` is the config's own data (``DataConfig.for_file``), and the
    flags over them (a flag wins)."""
    if not kind_named(cfg.data.kind).columns:
        no_table_options(label_column=label_column, id_column=id_column)
    flags = {"label_column": label_column, "id_columns": id_column or None}
    section = cfg.data.for_file(data, cfg.root).model_dump()
    section |= {k: v for k, v in flags.items() if v is not None}
    return cfg.model_copy(update={"data": DataConfig(**section)})


def no_table_options(**given) -> None:
    """ValueError naming the table-only options given for images."""
    named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v]
    if named:
        raise ValueError(
            f"{' and '.join(named)}: table options, not for images (data.kind images): labels "
            "come from the folder names (good = 0) or images.npz_class_key, and each image is "
            "identified by its path"
        )
