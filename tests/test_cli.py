"""The `vae-anomaly` command through its real entry point (a subprocess), on real files."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import ROOT, own_table


def run_cli(*args, cwd=None):
    env = dict(os.environ, MLFLOW_TRACKING_URI=os.environ.get("MLFLOW_TRACKING_URI", ""))
    return subprocess.run(
        [sys.executable, "-m", "vae_core.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli(
        "train",
        "--data",
        ROOT / "data" / "cardio.csv",
        "--label-column",
        "label",
        "--id-column",
        "record_id",
        "--out",
        out,
        "--epochs",
        "5",
        "--no-register",
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_writes_model_and_report(trained):
    out, result = trained
    assert (out / "model" / "model.json").exists() and (out / "model" / "weights.pt").exists()
    for name in ("report.json", "report.md", "roc_curve.png", "training_curve.png"):
        assert (out / "report" / name).exists(), name
    assert "ROC-AUC" in result.stdout and "Threshold" in result.stdout


def test_score_writes_ids_scores_and_flags(trained, tmp_path):
    out, _ = trained
    dest = tmp_path / "scores.parquet"
    result = run_cli(
        "score",
        "--model",
        out / "model",
        "--data",
        ROOT / "data" / "cardio.csv",
        "--id-column",
        "record_id",
        "--out",
        dest,
    )
    assert result.returncode == 0, result.stderr
    scores = pd.read_parquet(dest)
    assert len(scores) == 1831
    assert list(scores.columns[:5]) == [
        "record_id",
        "anomaly_score",
        "is_anomaly",
        "missing_columns",
        "anomaly_probability",
    ]
    assert scores["record_id"].is_unique and scores["top_feature_1"].notna().all()
    assert (scores["missing_columns"] == "").all()  # cardio.csv has no empty cells


def test_score_says_it_waits_for_another_run_of_the_same_output(trained, tmp_path):
    """A second ``vae-anomaly score`` into the same file waits for the batch's lock, says
    so, and writes its whole output once the first run lets go."""
    import threading
    import time

    out, _ = trained
    dest = tmp_path / "scores.parquet"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from vae_core.foundations.atomic import exclusive\n"
         "with exclusive(sys.argv[1]):\n print('held', flush=True); time.sleep(600)",
         tmp_path / ".scores.lock"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    second = None
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.Popen(
            [sys.executable, "-m", "vae_core.cli", "score", "--model", str(out / "model"),
             "--data", str(ROOT / "data" / "cardio.csv"), "--id-column", "record_id",
             "--out", str(dest)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        lines: list[str] = []  # its console (stderr, lines wrapped), read as it comes
        reader = threading.Thread(target=lambda: lines.extend(second.stderr), daemon=True)
        reader.start()
        waits = f"waiting for another run writing {dest}"
        deadline = time.monotonic() + 240  # however slow the start; never a hang
        while waits not in "".join(lines).replace("\n", "") and time.monotonic() < deadline:
            time.sleep(0.2)
        said = "".join(lines)
        assert second.poll() is None and not dest.exists(), "it must wait for the lock"
        holder.kill()
        stdout = second.stdout.read()
        second.wait(timeout=300)
        reader.join(timeout=30)
        stderr = "".join(lines)
    finally:
        holder.kill()
        if second is not None and second.poll() is None:
            second.kill()
    assert second.returncode == 0, said + stderr
    assert waits in said.replace("\n", "")
    assert "scored 1831 rows" in stdout
    assert len(pd.read_parquet(dest)) == 1831


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["score", "--model", "nowhere", "--data", "data/cardio.csv", "--out", "x.csv"],
            "nowhere is not a saved model",
        ),
        (["train", "--data", "missing.csv", "--out", "x"], "missing.csv does not exist"),
        (
            ["train", "--data", "data/cardio.csv", "--label-column", "nope", "--out", "x"],
            "label column 'nope' not found",
        ),
        (["train", "--data", "mlflow.yml", "--out", "x"], "unsupported file type '.yml'"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_code_2(args, message, tmp_path):
    result = run_cli(*args, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_score_takes_its_settings_from_the_config_and_a_flag_wins(trained, tmp_path):
    """The same precedence as the score flow: --flag > mlflow.yml (scoring.top_features,
    scoring.chunk_rows, scoring.drift_psi_warning) > the defaults."""
    from tests.helpers import write_pipeline_config

    out, _ = trained
    scoring = {"top_features": 1, "chunk_rows": 400, "drift_psi_warning": 1e-9}
    config = write_pipeline_config(tmp_path, {"scoring": scoring})
    args = ["score", "--model", out / "model", "--data", ROOT / "data" / "cardio.csv",
            "--id-column", "record_id", "--config", config]  # fmt: skip
    by_config = run_cli(*args, "--out", tmp_path / "a.parquet")
    assert by_config.returncode == 0, by_config.stderr
    columns = list(pd.read_parquet(tmp_path / "a.parquet").columns)
    assert "top_feature_1" in columns and "top_feature_2" not in columns
    assert "score drift: PSI" in by_config.stderr  # any drift exceeds a 1e-9 warning level
    by_flag = run_cli(*args, "--top-features", "2", "--out", tmp_path / "b.parquet")
    assert by_flag.returncode == 0, by_flag.stderr
    assert "top_feature_2" in pd.read_parquet(tmp_path / "b.parquet").columns


def test_own_table_from_the_command_line_in_the_checkout_with_the_demo_config(
    tmp_path, monkeypatch, _mlflow_template_db
):
    """In the checkout (its mlflow.yml, whose data section names the demo's record_id and
    label), a user's table that has neither: train -> registered under its own name ->
    promote -> score models:/NAME@champion, from the command line only. The demo's data
    settings apply to the demo's data only; a training without any column flag works too."""
    import shutil

    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from tests.helpers import config_store
    from vae_core.cli import app

    shutil.copy(ROOT / "mlflow.yml", tmp_path / "mlflow.yml")  # the checkout's, unchanged
    assert "id_columns: [record_id]" in (tmp_path / "mlflow.yml").read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(_mlflow_template_db, tmp_path / "mlflow.db")  # the config's store, migrated
    table = own_table(tmp_path)
    own = ["--data", "my.parquet", "--label-column", "is_fraud", "--id-column", "txn_id"]
    runner = CliRunner()
    with config_store():
        bare = runner.invoke(
            app, ["train", "--data", "my.parquet", "--id-column", "txn_id", "--out", "runs/v0",
                  "--epochs", "1", "--no-register"],
        )  # fmt: skip
        assert bare.exit_code == 0, bare.output  # no record_id asked for; no label, none used
        trained = runner.invoke(
            app, ["train", *own, "--out", "runs/v1", "--epochs", "3",
                  "--registered-model", "fraud", "--experiment", "fraud-dev"],
        )  # fmt: skip
        assert trained.exit_code == 0, trained.output
        assert "registered fraud version 1 as @challenger" in trained.output
        mlflow_script = Path(sys.executable).parent / "mlflow"
        assert f"review it:  {mlflow_script} ui --backend-store-uri" in trained.output
        # no --data: the held-out rows of the file version 1 was trained on, as recorded
        promoted = runner.invoke(app, ["promote", "--registered-model", "fraud"])
        assert promoted.exit_code == 0, promoted.output
        assert f"held-out rows of {tmp_path / 'my.parquet'}, as version 1" in promoted.output
        assert "models:/fraud@champion -> version 1" in promoted.output
        (tmp_path / "my.parquet").rename(tmp_path / "moved.parquet")
        gone = runner.invoke(app, ["promote", "--registered-model", "fraud", "--version", "1"])
        assert gone.exit_code == 2
        assert "version 1 was trained on" in gone.output and "give --data" in gone.output
        (tmp_path / "moved.parquet").rename(tmp_path / "my.parquet")
        scored = runner.invoke(
            app, ["score", "--model", "models:/fraud@champion", "--data", "my.parquet",
                  "--id-column", "txn_id", "--out", "scores.parquet", "--experiment", "fraud-dev",
                  "--top-features", "2"],
        )  # fmt: skip
        assert scored.exit_code == 0, scored.output
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert scores["txn_id"].tolist() == table["txn_id"].tolist()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.name for m in client.search_registered_models()] == ["fraud"]
    # the scoring run records the settings it scored with (the flag over the config)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("fraud-dev").experiment_id],
        filter_string="tags.`vae.step` = 'scoring'",
    )
    assert run.data.params["scoring.top_features"] == "2"
    assert run.data.params["scoring.chunk_rows"] == "100000"


def test_the_configs_data_settings_apply_to_its_own_data_only(tmp_path):
    """DataConfig.for_file: the config's label, id and dropped columns for its train_path or
    score_path (however spelled), none for another file; the flags go over either."""
    from vae_core.foundations.config import load_config

    cfg = load_config(ROOT / "mlflow.yml")
    assert cfg.data.id_columns == ["record_id"] and cfg.data.label_column == "label"
    for own in (None, ROOT / "data" / "cardio.csv", ROOT / "data" / ".." / "data" / "cardio.csv"):
        assert cfg.data.for_file(own, cfg.root) == cfg.data
    other = cfg.data.for_file(tmp_path / "my.parquet", cfg.root)
    assert (other.label_column, other.id_columns, other.drop_columns) == (None, [], [])
    assert other.train_path == cfg.data.train_path  # the rest of the section is unchanged


def test_score_takes_the_configs_id_columns_for_its_own_data(trained, tmp_path):
    out, _ = trained
    dest = tmp_path / "scores.parquet"
    result = run_cli("score", "--model", out / "model", "--data", "data/cardio.csv",
                     "--out", dest)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert pd.read_parquet(dest).columns[0] == "record_id"  # data.id_columns of mlflow.yml


def test_a_mistyped_id_column_is_named_as_an_id_column_with_the_file(trained, tmp_path):
    out, _ = trained
    table = own_table(tmp_path, n=50)
    args = ["--data", tmp_path / "my.parquet", "--id-column", "txnid"]
    train = ["train", "--out", tmp_path / "run", "--no-register"]
    score = ["score", "--model", out / "model", "--out", tmp_path / "s.parquet"]
    for command in (train, score):
        result = run_cli(*command, *args)
        assert result.returncode == 2, result.stderr
        assert f"{tmp_path / 'my.parquet'}: id column(s) 'txnid' not found" in result.stderr
        assert "'txn_id'" in result.stderr and "schema" not in result.stderr
    assert "record_id" not in table.columns


def test_score_keeps_the_models_id_columns_by_default(trained, tmp_path):
    """Without --id-column, a table other than the config's own gets the id columns the
    model was trained with; a table without them is scored in order, and says so."""
    out, _ = trained
    cardio = pd.read_csv(ROOT / "data" / "cardio.csv")
    cardio.head(40).to_csv(tmp_path / "tonight.csv", index=False)
    result = run_cli("score", "--model", out / "model", "--data", tmp_path / "tonight.csv",
                     "--out", tmp_path / "s.parquet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = pd.read_parquet(tmp_path / "s.parquet")
    assert scores["record_id"].tolist() == cardio["record_id"].head(40).tolist()
    assert "ids: record_id (the model's id columns" in result.stderr
    cardio.head(40).drop(columns="record_id").to_csv(tmp_path / "no_ids.csv", index=False)
    result = run_cli("score", "--model", out / "model", "--data", tmp_path / "no_ids.csv",
                     "--out", tmp_path / "n.parquet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "record_id" not in pd.read_parquet(tmp_path / "n.parquet").columns
    said = " ".join(result.stderr.split())
    assert f"{tmp_path / 'no_ids.csv'} lacks the model's id column(s) 'record_id'" in said


def test_an_error_keeps_both_quotes_and_no_progress_line_comes_before_it(trained, tmp_path):
    out, _ = trained
    cardio = pd.read_csv(ROOT / "data" / "cardio.csv").head(40)
    gone = cardio.columns[3]
    cardio.drop(columns=gone).to_csv(tmp_path / "short.csv", index=False)
    result = run_cli("score", "--model", out / "model", "--data", tmp_path / "short.csv",
                     "--id-column", "record_id", "--out", tmp_path / "s.parquet")  # fmt: skip
    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.split())
    assert f"'{gone}'" in said, said  # the closing quote too
    assert "scoring" not in result.stderr.split("error:")[0]
    assert not (tmp_path / "s.parquet").exists()


def test_a_key_errors_text_is_its_message_as_written():
    from vae_core.cli.common import error_text

    assert error_text(KeyError("missing column 'band_7'")) == "missing column 'band_7'"
    assert error_text(ValueError("column 'a' is text")) == "column 'a' is text"
    assert error_text(FileNotFoundError(2, "No such file", "x.csv")).endswith("'x.csv'")


def test_the_help_gives_the_config_default_and_is_not_cut_at_80_columns():
    def helped(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "vae_core.cli", *args, "--help"],
            capture_output=True, text=True, env=dict(os.environ, COLUMNS="80"), timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert max(map(len, result.stdout.splitlines())) <= 80
        return result.stdout

    commands = helped().split("Commands:")[1]
    assert "..." not in commands and "…" not in commands  # every command's line whole
    text = " ".join(helped("score").split())
    assert "(default: ./mlflow.yml if there is one, else the built-in defaults" in text
