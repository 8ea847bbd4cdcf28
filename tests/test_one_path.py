"""One path whichever door a user takes: ``vae-anomaly score`` and the score flow, given the
same config and the same data, write the same rows, columns and values (issue 11).

The model is the session's tiny cardio model, registered and promoted in a sqlite store of
its own; the config sets scoring values other than the defaults (chunk_rows, top_features)
and the id column, so a door that ignored one of them would write something else.
"""

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.helpers import CARDIO, config_store, promote, register, write_pipeline_config


@pytest.fixture(scope="module")
def champion(tmp_path_factory, cardio_table, trained_cardio):
    """A config in a fresh folder (its own sqlite store) whose champion is the session's
    trained cardio model."""
    from vae_core.foundations.config import load_config

    folder = tmp_path_factory.mktemp("one-path")
    config = write_pipeline_config(
        folder,
        {
            "tracking": {"uri": "sqlite:///mlflow.db"},
            "data": {"score_path": str(CARDIO)},
            "scoring": {"output_dir": "scores", "chunk_rows": 300, "top_features": 2},
        },
    )
    with config_store():
        cfg = load_config(config)
        target, _ref = register(cfg, cardio_table, trained_cardio)
        promote(target, cfg, cardio_table)
    return config, cfg


def test_the_command_line_and_the_flow_write_the_same_scores(champion, harness, tmp_path):
    from flows.score import score
    from vae_core.cli import app

    config, cfg = champion
    with config_store():
        flow = pd.read_parquet(score(data_path=str(CARDIO), config_path=str(config))["output"])
        model = f"models:/{cfg.tracking.registered_model}@champion"
        out = tmp_path / "cli.parquet"
        args = ["score", "--model", model, "--data", str(CARDIO), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    cli = pd.read_parquet(out)
    assert len(flow) == 1831 and flow["record_id"].is_unique
    assert "top_feature_2" in flow and "top_feature_3" not in flow  # the config's top_features
    pd.testing.assert_frame_equal(cli, flow, check_exact=True)


def test_another_file_gives_the_same_scores_when_its_ids_are_named(champion, harness, tmp_path):
    """A table that is not the config's own data (a nightly batch): the flow passes the
    config's id columns through; the command line applies the data section to the config's
    own file only (``DataConfig.for_file``) and takes a user's table's ids from --id-column.
    Named so, the two doors write the same file."""
    import shutil

    from flows.score import score
    from vae_core.cli import app

    config, cfg = champion
    other = shutil.copy(CARDIO, tmp_path / "batch.csv")
    with config_store():
        flow = pd.read_parquet(score(data_path=str(other), config_path=str(config))["output"])
        model = f"models:/{cfg.tracking.registered_model}@champion"
        out = tmp_path / "cli.parquet"
        args = ["score", "--model", model, "--data", str(other), "--out", str(out)]
        result = CliRunner().invoke(
            app, [*args, "--id-column", "record_id", "--config", str(config)]
        )
    assert result.exit_code == 0, result.output
    assert flow["record_id"].is_unique and len(flow) == 1831
    pd.testing.assert_frame_equal(pd.read_parquet(out), flow, check_exact=True)


def test_score_batch_names_its_output_by_file_or_by_batch_in_a_folder(trained_cardio, tmp_path):
    """``batch.score_batch``, what both doors call: a table file output is its own batch
    (its name), a folder gets ``<batch id>.parquet``; a batch id beside a file is refused
    before anything is written; both give the same scores."""
    from vae_core.foundations.config import load_config
    from vae_core.steps.batch import score_batch

    cfg = load_config(write_pipeline_config(tmp_path, {"data": {"score_path": str(CARDIO)}}))
    det = trained_cardio.detector
    in_folder = score_batch(det, CARDIO, cfg, tmp_path / "scores", "nightly")
    assert in_folder.output == tmp_path / "scores" / "nightly.parquet"
    assert (in_folder.batch_id, in_folder.rows, in_folder.unit) == ("nightly", 1831, "rows")
    with pytest.raises(ValueError, match="batch id"):
        score_batch(det, CARDIO, cfg, tmp_path / "named.parquet", "nightly")
    assert not (tmp_path / "named.parquet").exists()
    as_file = score_batch(det, CARDIO, cfg, tmp_path / "named.parquet")
    assert as_file.batch_id == "named" and as_file.flagged == in_folder.flagged
    pd.testing.assert_frame_equal(
        pd.read_parquet(as_file.output), pd.read_parquet(in_folder.output)
    )
