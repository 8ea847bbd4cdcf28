"""The project's users on an MLflow server run with ``--app-name basic-auth``: each with a
role (``ROLES``) and its permissions, set up by ``set_up_access`` (the ``vae-anomaly
access`` command), which is repeatable and replaces the admin's bootstrap password.
docs/production.md, section 8 ("Access control"), says who holds which role and what MLflow's
permissions cannot separate.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from vae_core.tracking.access import EXPERIMENT, MODEL, PASSWORD_ENV, acting, current_user
from vae_core.tracking.registration import ensure_registered_model
from vae_core.tracking.store import (
    TrackingTarget,
    experiment_id_of,
    mlflow_client,
    tracking_call,
)

MIN_PASSWORD_LENGTH = 12  # MLflow's own rule; checked before any user is changed

# What each role may do: its permission on the registered model, on the training experiment
# (training runs and the models' files), on the scoring experiment (scoring runs) and on
# logged models. MLflow cannot tell registering a version from moving @champion: both are an
# update of the registered model (EDIT), so a trainer could move @champion too
# (docs/production.md).
ROLES: dict[str, dict[str, str]] = {
    # loads the champion, logs scoring runs; cannot register a version or move an alias.
    # Linking the champion's logged model as a scoring run's input needs EDIT on logged
    # models (MLflow grants that on all of them, "*", or through their experiment)
    "scorer": {
        "model": "READ",
        "experiment": "READ",
        "scoring_experiment": "EDIT",
        "logged_models": "EDIT",
    },
    # logs training runs, registers versions as @challenger
    "trainer": {"model": "EDIT", "experiment": "EDIT", "scoring_experiment": "READ"},
    # promotes through the gate (moves @champion), may delete versions; records reviewers'
    # verdicts (vae-anomaly feedback: a feedback run in the training experiment, metrics on
    # the scoring runs and their logged models)
    "reviewer": {
        "model": "MANAGE",
        "experiment": "EDIT",
        "scoring_experiment": "EDIT",
        "logged_models": "EDIT",
    },
}


@dataclass(frozen=True)
class AccessPlan:
    """Who gets which role, with the passwords the caller read from the environment.

    users : user -> (role, password).
    admin_password : the admin's new password, or None to keep the current one.
    """

    users: dict[str, tuple[str, str]]
    admin_password: str | None = None

    def check(self) -> None:
        """``ValueError`` naming the first unknown role or short password (by its user)."""
        for user, (role, password) in self.users.items():
            if role not in ROLES:
                raise ValueError(f"user {user!r}: unknown role {role!r} (one of {list(ROLES)})")
            if len(password) < MIN_PASSWORD_LENGTH:
                raise ValueError(
                    f"the password of user {user!r} has {len(password)} characters; MLflow "
                    f"needs at least {MIN_PASSWORD_LENGTH}"
                )
        if self.admin_password is not None and len(self.admin_password) < MIN_PASSWORD_LENGTH:
            raise ValueError(
                f"the new admin password has {len(self.admin_password)} characters; MLflow "
                f"needs at least {MIN_PASSWORD_LENGTH}"
            )


@tracking_call
def set_up_access(
    target: TrackingTarget, scoring_experiment: str, plan: AccessPlan
) -> dict[str, dict[str, str]]:
    """Create (or update) each user of ``plan`` with its password and its role's permissions
    on ``target``'s registered model and experiment and on ``scoring_experiment`` (the three
    created if missing); then replace the admin's password if ``plan`` has a new one. Run as
    the admin (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``). Repeatable: an existing user gets
    the plan's password and exactly its role's permissions. Returns user -> {resource:
    permission}."""
    plan.check()
    with warnings.catch_warnings():  # the server's modules warn of their own deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=target.uri)
    resources = _resources(target, scoring_experiment)
    granted: dict[str, dict[str, str]] = {}
    for user, (role, password) in plan.users.items():
        with acting(f"create or update user {user!r}", "the admin's credentials"):
            try:
                auth.create_user(user, password)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                auth.update_user_password(user, password)
            granted[user] = {}
            for key, permission in ROLES[role].items():
                kind, resource_id, label = resources[key]
                _grant(auth, user, kind, resource_id, permission)
                granted[user][label] = permission
    if plan.admin_password is not None:
        admin = current_user()
        with acting(f"replace the password of {admin!r}", "the admin's current password"):
            auth.update_user_password(
                admin, plan.admin_password, current_password=os.environ.get(PASSWORD_ENV)
            )
    return granted


def _resources(target: TrackingTarget, scoring_experiment: str) -> dict[str, tuple]:
    """The role keys as (resource type, resource id, label); the three are created if
    missing (a grant names an experiment by its id)."""
    with acting("create the experiments and the registered model", "the admin's credentials"):
        training = experiment_id_of(target)
        scoring = experiment_id_of(target, scoring_experiment)
        ensure_registered_model(mlflow_client(target), target.model_name)
    return {
        "model": ("registered_model", target.model_name, f"{MODEL} {target.model_name}"),
        "experiment": ("experiment", training, f"{EXPERIMENT} {target.experiment}"),
        "scoring_experiment": ("experiment", scoring, f"{EXPERIMENT} {scoring_experiment}"),
        "logged_models": ("logged_model", "*", "logged models (all)"),
    }


def _grant(auth, user: str, kind: str, resource_id: str, permission: str) -> None:
    """Give ``user`` exactly ``permission`` on the resource (an earlier grant is replaced)."""
    try:
        auth.grant_user_permission(user, kind, resource_id, permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(user, kind, resource_id)
        auth.grant_user_permission(user, kind, resource_id, permission)
