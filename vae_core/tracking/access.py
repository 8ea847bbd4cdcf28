"""Who may do what on an MLflow server run as ``mlflow server --app-name basic-auth``
(docs/production.md, section 8, "Access control").

- Credentials come from the environment only (``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD``, which MLflow's client reads on each request); a tracking URI
  that carries a password is refused (``check_uri``), so none reaches a config file, a log
  line or a run's parameters.
- A refused call (401, 403) becomes ``AccessRefused``: one line naming the user, the action
  and the permission it needs (``refusal``). The action is the innermost ``acting(...)``
  around the refused call, else read from the refused endpoint.

The users and their permissions are set up by ``vae_core.tracking.users``.

Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
MODEL, EXPERIMENT = "registered model", "experiment"


class AccessRefused(PermissionError):
    """The tracking server refused a call; the message (one line) names the user, the action
    and the permission it needs, never a password."""


# ---------------------------------------------------------------------- credentials


def check_uri(uri: str) -> str:
    """``uri``, or ``ValueError`` when it carries credentials: they belong in the environment
    (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), not in mlflow.yml or MLFLOW_TRACKING_URI,
    which the commands print. The message shows the URI without them."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        host = parts.hostname or ""
        shown = urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
        raise ValueError(
            f"the tracking URI {shown} carries credentials: remove them from tracking.uri "
            f"(or MLFLOW_TRACKING_URI) and set {USERNAME_ENV} and {PASSWORD_ENV} instead"
        )
    return uri


def current_user() -> str | None:
    """The user this process authenticates as (``MLFLOW_TRACKING_USERNAME``), or None."""
    return os.environ.get(USERNAME_ENV) or None


# ---------------------------------------------------------------------- refusals

_LABEL = "vae_action"  # attribute of a refused call's exception: (action, needs)


@contextlib.contextmanager
def acting(action: str, needs: str) -> Iterator[None]:
    """Name what the calls inside do, for the message of a refusal among them: ``action``
    ("move @champion of registered model 'm' to version 2") and what it ``needs`` ("EDIT on
    registered model 'm'"). The innermost ``acting`` names it; ``refusal`` reads it."""
    try:
        yield
    except Exception as exc:
        if refusal_of(exc) is not None and not hasattr(exc, _LABEL):
            setattr(exc, _LABEL, (action, needs))
        raise


@dataclass(frozen=True)
class Refusal:
    """A refused HTTP call: its status (401 or 403), endpoint path and method (if known)."""

    status: int
    endpoint: str
    method: str | None = None


def refusal_of(exc: BaseException) -> Refusal | None:
    """The refusal an exception from MLflow's client reports, or None if it is no refusal:
    an ``MlflowException`` with error code UNAUTHENTICATED or PERMISSION_DENIED (REST calls),
    or a ``requests.HTTPError`` with status 401 or 403 (the artifact proxy)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            request = exc.response.request
            path = urlsplit(exc.response.url).path
            return Refusal(status, path, request.method if request is not None else None)
        return None
    if isinstance(exc, MlflowException):
        status = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(exc.error_code)
        if status is None:
            return None
        message = exc.message
        endpoint = message.split("endpoint ", 1)[1].split()[0] if "endpoint " in message else ""
        return Refusal(status, endpoint)
    return None


# What each tracking function does, for a refusal's message where no inner ``acting(...)``
# names the refused call: function name -> (action, what it needs), with {model},
# {experiment} and {scoring} the target's registered model, experiment and scoring experiment.
ACTIONS: dict[str, tuple[str, str]] = {
    "connect": ("open {experiment}", "READ on {experiment}"),
    "start_training_run": ("log a training run in {experiment}", "EDIT on {experiment}"),
    "log_training_run": ("log a training run in {experiment}", "EDIT on {experiment}"),
    "register_challenger": (
        "register a version of {model}",
        "EDIT on {model} (and READ on {experiment})",
    ),
    "training_data_of": (
        "read how a version of {model} was trained",
        "READ on {model} and {experiment}",
    ),
    "promote_challenger": (
        "promote a version of {model}",
        "EDIT on {model} (and READ on {experiment}: the models' files)",
    ),
    "load_registered": (
        "load a version of {model}",
        "READ on {model} and on {experiment} (the model's files)",
    ),
    "scored_rows": ("read the scoring runs of {model}", "READ on {scoring} and {model}"),
    "read_feedback": ("read the verdicts on {model}", "READ on {model} and {experiment}"),
    "record_feedback": (
        "record verdicts on {model}",
        "EDIT on {model}, {experiment} and {scoring} (and on logged models)",
    ),
    "log_scoring_run": (
        "log a scoring run in {scoring}",
        "EDIT on {scoring} (and on logged models: the run's link to its model)",
    ),
    "log_batch_scoring": (
        "log a scoring run in {scoring}",
        "EDIT on {scoring} (and on logged models: the run's link to its model)",
    ),
}


def names_of(target) -> dict[str, str]:
    """The target's resources as a refusal names them."""
    scoring = target.scoring_experiment or target.experiment
    return {
        "model": f"{MODEL} {target.model_name!r}",
        "experiment": f"{EXPERIMENT} {target.experiment!r}",
        "scoring": f"{EXPERIMENT} {scoring!r}",
    }


@contextlib.contextmanager
def acting_for(function: str, target) -> Iterator[None]:
    """``acting(...)`` with ``ACTIONS[function]`` for ``target``; nothing if it has none."""
    if function not in ACTIONS:
        yield
        return
    names = names_of(target)
    action, needs = (text.format(**names) for text in ACTIONS[function])
    with acting(action, needs):
        yield


def _endpoint_action(refusal: Refusal) -> tuple[str, str]:
    """(action, needs) from the refused endpoint alone, where no ``acting(...)`` names it."""
    reads = (refusal.method or "GET") == "GET" and "/create" not in refusal.endpoint
    on_model = "/registered-models/" in refusal.endpoint or "/model-versions/" in refusal.endpoint
    needs = f"{'READ' if reads else 'EDIT'} on its {MODEL if on_model else EXPERIMENT}"
    return f"call {refusal.endpoint or 'the server'}", needs


def refusal(target, exc: BaseException) -> AccessRefused | None:
    """``AccessRefused`` for a refused call (``refusal_of``), or None for any other error.

    403: "user 'scorer' may not move @champion of registered model 'm' to version 2: it needs
    EDIT on registered model 'm' (refused by MLflow at URI)". 401: the credentials (missing
    or wrong) and what was being done."""
    found = refusal_of(exc)
    if found is None:
        return None
    action, needs = getattr(exc, _LABEL, None) or _endpoint_action(found)
    user = current_user()
    where = f"MLflow at {target.uri}"
    if found.status == 401:
        if user is None:
            return AccessRefused(
                f"{where} asks who you are (to {action}): set {USERNAME_ENV} and "
                f"{PASSWORD_ENV} in the environment"
            )
        return AccessRefused(
            f"{where} refused the password of user {user!r} (to {action}): check {PASSWORD_ENV}"
        )
    return AccessRefused(
        f"user {user or '(none)'!r} may not {action}: it needs {needs} (refused by {where}; "
        "an admin grants it with `vae-anomaly access`)"
    )
