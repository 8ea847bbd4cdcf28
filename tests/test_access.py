"""Credentials and refusals without a server (tests/test_production_access.py runs the real
servers): a tracking URI carrying a password is refused without printing it; a refused call
becomes one line naming the user, the action and the permission; ``vae-anomaly access``
checks its users and passwords before it contacts the server."""

import pytest
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from tests.helpers import write_pipeline_config
from vae_core.cli import app
from vae_core.foundations.config import load_config
from vae_core.tracking import access
from vae_core.tracking.store import TrackingTarget
from vae_core.tracking.users import AccessPlan

TARGET = TrackingTarget("http://127.0.0.1:5000", "vae-anomaly", "vae-anomaly", None, 1, "scores")


def _refused(status: int) -> MlflowException:
    """MLflow's client error for a 401 or 403, as its REST layer raises it."""
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

    code = {401: UNAUTHENTICATED, 403: PERMISSION_DENIED}[status]
    return MlflowException(
        f"API request to endpoint /api/2.0/mlflow/registered-models/alias failed with error "
        f"code {status} != 200. Response body: 'Permission denied'",
        error_code=code,
    )


@pytest.mark.parametrize("uri", ["http://bob:s3cret-pass@127.0.0.1:5000", "https://bob@host:443"])
def test_a_tracking_uri_with_credentials_is_refused_without_printing_them(
    tmp_path, monkeypatch, uri
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(write_pipeline_config(tmp_path, {"tracking": {"uri": uri}}))
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_USERNAME") as refused:
        TrackingTarget.from_config(cfg)
    assert "s3cret" not in str(refused.value) and "bob" not in str(refused.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the environment's URI is checked too
    with pytest.raises(ValueError, match="carries credentials"):
        TrackingTarget.from_config(load_config(write_pipeline_config(tmp_path)))


def test_a_refusal_names_the_user_the_action_and_the_permission(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "scorer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-password-never-shown")
    with pytest.raises(MlflowException) as raised:
        with access.acting_for("promote_challenger", TARGET):
            with access.acting("move @champion of registered model 'm' to version 2", "EDIT"):
                raise _refused(403)
    line = str(access.refusal(TARGET, raised.value))
    assert line.startswith("user 'scorer' may not move @champion of registered model 'm'")
    assert "needs EDIT" in line and TARGET.uri in line and "\n" not in line
    assert "a-password-never-shown" not in line

    with pytest.raises(MlflowException) as raised:
        with access.acting_for("log_batch_scoring", TARGET):  # the function's own label
            raise _refused(403)
    line = str(access.refusal(TARGET, raised.value))
    assert "may not log a scoring run in experiment 'scores'" in line, line

    wrong = str(access.refusal(TARGET, _refused(401)))
    assert "refused the password of user 'scorer'" in wrong and "MLFLOW_TRACKING_PASSWORD" in wrong
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    assert "set MLFLOW_TRACKING_USERNAME" in str(access.refusal(TARGET, _refused(401)))
    assert access.refusal(TARGET, MlflowException("no such model")) is None  # not a refusal


def test_an_access_plan_is_checked_before_any_user_changes():
    with pytest.raises(ValueError, match="unknown role 'owner'"):
        AccessPlan({"ann": ("owner", "x" * 12)}).check()
    with pytest.raises(ValueError, match="password of user 'ann' has 5 characters"):
        AccessPlan({"ann": ("scorer", "short")}).check()
    AccessPlan({"ann": ("reviewer", "x" * 12)}, admin_password="y" * 12).check()


def test_the_access_command_takes_passwords_from_the_environment_only(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VAE_ACCESS_PASSWORD_ANN", raising=False)
    runner = CliRunner()
    open_profile = write_pipeline_config(tmp_path, {"tracking": {"uri": "http://127.0.0.1:9"}})
    args = ["access", "--config", str(open_profile), "--user", "ann=scorer"]
    done = runner.invoke(app, args)
    assert done.exit_code == 2 and "tracking.scoring_experiment is not set" in done.output
    config = write_pipeline_config(
        tmp_path, {"tracking": {"uri": "http://127.0.0.1:9", "scoring_experiment": "scores"}}
    )
    done = runner.invoke(app, ["access", "--config", str(config), "--user", "ann=scorer"])
    assert done.exit_code == 2 and "set VAE_ACCESS_PASSWORD_ANN" in done.output, done.output
    done = runner.invoke(app, ["access", "--config", str(config), "--user", "ann"])
    assert done.exit_code == 2 and "expected NAME=ROLE" in done.output, done.output
