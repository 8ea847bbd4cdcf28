"""Flow run names at start (flows/run_names.py): the file the run reads, also when it reads
the config's default file, never the parameter's name."""

import pytest

from flows import run_names
from tests.helpers import ROOT


@pytest.mark.parametrize(
    ("params", "train", "score"),
    [
        ({}, "train-cardio.csv", "score-cardio.csv"),  # mlflow.yml's data.train_path, score_path
        ({"config_path": str(ROOT / "configs" / "mnist.yml")}, "train-mnist", "score-test"),
        ({"data_path": "in/my.parquet"}, "train-my.parquet", "score-my.parquet"),
        ({"batch_id": "night 1", "data_path": "in/a.csv"}, "train-a.csv", "score-night-1"),
        ({"config_path": "no-such.yml"}, "train-train_path", "score-score_path"),  # never fails
    ],
)
def test_a_run_is_named_after_what_it_reads(monkeypatch, params, train, score):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(run_names, "_parameters", lambda: params)
    assert (run_names.train_run_name(), run_names.score_run_name()) == (train, score)
