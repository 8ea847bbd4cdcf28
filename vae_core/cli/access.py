"""``vae-anomaly access``: the users of an MLflow server run with ``--app-name basic-auth``
and their permissions (``vae_core.tracking.users.ROLES``), set up as the admin; repeatable.

Registered on ``vae_core.cli.app`` (imported at the end of ``vae_core.cli.commands``).
Passwords come from the environment only, never from the command line or mlflow.yml: the
admin's current one from ``MLFLOW_TRACKING_PASSWORD``, each user's from
``VAE_ACCESS_PASSWORD_<USER>``, the admin's new one from ``VAE_ACCESS_ADMIN_PASSWORD``.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer

from vae_core.cli.common import ConfigOpt, app, user_errors

PASSWORD_PREFIX = "VAE_ACCESS_PASSWORD_"
NEW_ADMIN_PASSWORD = "VAE_ACCESS_ADMIN_PASSWORD"


def password_variable(user: str) -> str:
    """The environment variable that holds ``user``'s password: ``VAE_ACCESS_PASSWORD_`` and
    the name in capitals, any other character than a letter or digit as ``_``."""
    return PASSWORD_PREFIX + re.sub(r"[^A-Z0-9]", "_", user.upper())


def _plan(users: list[str]):
    """``users`` (``NAME=ROLE``) with their passwords from the environment, as an
    ``AccessPlan``; ``ValueError`` naming a malformed entry or a missing variable."""
    from vae_core.tracking.users import AccessPlan

    planned: dict[str, tuple[str, str]] = {}
    for entry in users:
        name, sep, role = entry.partition("=")
        if not sep or not name.strip() or not role.strip():
            raise ValueError(f"--user {entry!r}: expected NAME=ROLE, e.g. scorer=scorer")
        name = name.strip()
        if name in planned:
            raise ValueError(f"--user {name!r} is given twice")
        password = os.environ.get(password_variable(name))
        if not password:
            raise ValueError(f"the password of user {name!r}: set {password_variable(name)}")
        planned[name] = (role.strip(), password)
    return AccessPlan(planned, os.environ.get(NEW_ADMIN_PASSWORD) or None)


@app.command()
@user_errors
def access(
    user: Annotated[
        list[str],
        typer.Option(
            help="NAME=ROLE, repeated; ROLE is scorer (READ on the registered model, EDIT on "
            "tracking.scoring_experiment), trainer (EDIT on the model and the experiment) or "
            "reviewer (MANAGE on the model). The password comes from "
            f"{PASSWORD_PREFIX}<NAME> in the environment."
        ),
    ],
    config: ConfigOpt = None,
) -> None:
    """Create or update the users of the MLflow server (tracking.uri) and their permissions,
    as its admin (MLFLOW_TRACKING_USERNAME/PASSWORD); with VAE_ACCESS_ADMIN_PASSWORD set,
    replace the admin's password too. Safe to run again (docs/production.md)."""
    from vae_core.foundations.config import load_config

    cfg = load_config(config)
    if not cfg.tracking.scoring_experiment:
        raise ValueError(
            "tracking.scoring_experiment is not set in the config: give scoring runs an "
            "experiment of their own, so that the scoring worker may write there only"
        )
    plan = _plan(user)
    from vae_core.tracking import registry, users

    target = registry.TrackingTarget.from_config(cfg)
    granted = users.set_up_access(target, cfg.tracking.scoring_experiment, plan)
    for name, permissions in granted.items():
        shown = ", ".join(f"{p} on {resource}" for resource, p in permissions.items())
        typer.echo(f"{name} ({plan.users[name][0]}): {shown}")
    if plan.admin_password is not None:
        typer.echo(f"replaced the password of {os.environ.get('MLFLOW_TRACKING_USERNAME')!r}")
    else:
        typer.echo(f"kept the admin's password ({NEW_ADMIN_PASSWORD} not set)")
