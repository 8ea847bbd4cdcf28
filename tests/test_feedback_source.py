"""The verdicts table's dataset source, on every kind of artifact store (issue 24).

A tracking server that proxies artifacts hands runs ``mlflow-artifacts:`` URIs, which
MLflow's dataset sources cannot resolve: ``mlflow.data.from_pandas`` raised on them, so
``vae-anomaly feedback`` failed against any such server (found by the access e2e set-up).
"""

import pandas as pd
import pytest

mlflow_data = pytest.importorskip("mlflow.data")

from vae_core.tracking.feedback_runs import VERDICTS_TABLE, verdicts_source  # noqa: E402

VERDICTS = pd.DataFrame({"record_id": [1, 2], "label": [0, 1]})


@pytest.mark.parametrize(
    ("artifact_uri", "expected"),
    [
        (
            "mlflow-artifacts:/3/abc/artifacts",
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/3/abc/artifacts/",
        ),
        (
            "mlflow-artifacts://10.0.0.5:5000/3/abc/artifacts",
            "http://10.0.0.5:5000/api/2.0/mlflow-artifacts/artifacts/3/abc/artifacts/",
        ),
    ],
)
def test_a_proxied_artifact_becomes_an_http_source_that_mlflow_records(artifact_uri, expected):
    source = verdicts_source(artifact_uri, "http://127.0.0.1:5000/")
    dataset = mlflow_data.from_pandas(VERDICTS, source=source, name="m-verdicts", targets="label")
    assert dataset.source.url == expected + VERDICTS_TABLE
    assert dataset._to_mlflow_entity().source_type == "http"


def test_a_local_store_keeps_its_path(tmp_path):
    source = verdicts_source(str(tmp_path / "artifacts"), "sqlite:///mlflow.db")
    assert source == f"{tmp_path / 'artifacts'}/{VERDICTS_TABLE}"
    dataset = mlflow_data.from_pandas(VERDICTS, source=source, name="m-verdicts", targets="label")
    assert dataset.source.to_dict()  # resolved without raising
