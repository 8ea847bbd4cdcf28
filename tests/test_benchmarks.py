"""Smoke tests of the benchmark scripts: they run, skip what is not tabular, write their JSON.

The benchmarks themselves are scripts that print tables, not timed tests; these only check the
plumbing on tiny data (a few seconds, no PyOD needed).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import protocol  # noqa: E402 - benchmarks/ is not a package; its folder is on the path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "script",
    ["quality.py", "speed.py", "images.py", "score_parquet.py", "sweep.py", "train_memory.py",
     "scale_out.py", "ppca.py", "whitening.py", "combine_scores.py",
     "member_cost.py"],
)  # fmt: skip
def test_help_is_fast_and_imports_no_torch(script):
    done = _run("-X", "importtime", str(BENCH / script), "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert "torch" not in {line.split("|")[-1].strip() for line in done.stderr.splitlines()}


def test_parse_params_reads_literals_and_strings():
    params = protocol.parse_params(["epochs=2", "hidden_dims=(8, 4)", "likelihood=bernoulli"])
    assert params == {"epochs": 2, "hidden_dims": (8, 4), "likelihood": "bernoulli"}
    with pytest.raises(ValueError, match="key=value"):
        protocol.parse_params(["epochs"])


def test_adbench_split_is_stratified_scaled_and_capped():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12_000, 3)).astype("float32")
    y = (rng.random(12_000) < 0.05).astype(int)
    split = protocol.adbench_split(X, y, seed=0)
    assert len(split.y_train) + len(split.y_test) == protocol.MAX_ROWS
    assert len(split.y_test) == 3_000
    assert abs(split.y_test.mean() - split.y_train.mean()) < 0.002
    np.testing.assert_allclose([split.X_train.min(), split.X_train.max()], [0.0, 1.0], atol=1e-6)


def _tiny_set(folder):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype("float32")
    y = np.zeros(300, dtype=int)
    y[:15] = 1
    X[:15] += 5.0
    np.savez(folder / "tiny.npz", X=X, y=y)


def test_quality_runs_on_a_folder_and_writes_json(tmp_path):
    _tiny_set(tmp_path)
    np.savez(tmp_path / "pictures.npz", X_train=np.zeros((3, 4, 4), dtype="uint8"))
    out = tmp_path / "out.json"
    done = _run(
        str(BENCH / "quality.py"), str(tmp_path), "--seeds", "1",
        "--methods", "vae_core", "iforest", "--vae-param", "epochs=2", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipped pictures.npz" in done.stderr
    assert "NON-DEFAULT" in done.stdout and "| tiny |" in done.stdout
    results = json.loads(out.read_text())["results"]
    assert {r["method"] for r in results} == {"vae_core", "iforest"}
    for r in results:
        assert r["dataset"] == "tiny" and r["seed"] == 0
        assert r["roc_auc"] > 0.9 and 0 < r["average_precision"] <= 1 and r["fit_seconds"] > 0


def test_a_set_with_few_anomalies_keeps_them_in_the_subsample_or_is_skipped():
    # 30 anomalies in 95,000 rows (as a real ADBench set): a uniform 10,000-row subsample
    # can leave one, and the stratified 70/30 split then fails inside scikit-learn.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(95_000, 2)).astype("float32")
    y = np.zeros(95_000, dtype=int)
    y[rng.choice(95_000, 30, replace=False)] = 1
    for seed in range(3):
        split = protocol.adbench_split(X, y, seed)
        assert split.y_train.sum() >= 1 and split.y_test.sum() >= 1
    y_one = np.zeros(95_000, dtype=int)
    y_one[:5] = 1  # 5 * 10,000 / 95,000 < 1 left: the set is skipped, saying why
    with pytest.raises(protocol.SkipDataset, match="fewer than 2"):
        protocol.adbench_split(X, y_one, 0)


def test_quality_skips_a_set_it_cannot_split_and_goes_on(tmp_path):
    rng = np.random.default_rng(1)
    big = rng.normal(size=(12_000, 2)).astype("float32")
    y_big = np.zeros(12_000, dtype=int)
    y_big[0] = 1
    np.savez(tmp_path / "a_rare.npz", X=big, y=y_big)
    X = rng.normal(size=(200, 3)).astype("float32")
    y = (np.arange(200) < 10).astype(int)
    X[:10] += 6.0
    np.savez(tmp_path / "b_fine.npz", X=X, y=y)
    done = _run(str(BENCH / "quality.py"), str(tmp_path), "--seeds", "1", "--methods", "iforest")
    assert done.returncode == 0, done.stderr
    assert "| b_fine |" in done.stdout and "Skipped a_rare" in done.stdout


def test_train_memory_trains_on_a_sample_of_a_larger_file(tmp_path):
    """The table training memory benchmark runs a whole training on a bounded sample."""
    done = _run(str(BENCH / "train_memory.py"), "--rows", "3000", "--features", "4",
                "--max-train-rows", "1000", "--workdir", str(tmp_path),
                "--json", str(tmp_path / "m.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads((tmp_path / "m.json").read_text())["results"]
    assert result["file_rows"] == 3000 and result["rows_read"] == 1000
    assert "| 3,000 |" in done.stdout


def _readme_row(label: str) -> list[str]:
    readme = (BENCH.parent / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith(f"| {label}"))
    return [cell.strip().strip("*") for cell in line.strip("|").split("|")[1:]]


def _mean_of(results: list[dict], method: str, key: str, by: str) -> float:
    groups: dict = {}
    for r in results:
        if r["method"] == method and r.get(key) is not None:
            groups.setdefault(r[by], []).append(r[key])
    return float(np.mean([np.mean(v) for v in groups.values()]))


def test_the_readme_results_table_is_the_recorded_benchmark_runs():
    """The README's quality figures are the means of the JSON the benchmark commands wrote
    (benchmarks/results/quality_peers.json, images.json): rerun the benchmarks, then
    benchmarks/readme_table.py, which rewrites the README's table (checked here: the block
    is what the script writes, and its figures are the means, computed again here)."""
    import readme_table

    assert readme_table.main(["--check"]) == 0, "run python benchmarks/readme_table.py"
    results = BENCH / "results"
    quality = json.loads((results / "quality_peers.json").read_text())["results"]
    methods = ("vae_core", "pyod_vae", "iforest", "mcd", "knn", "ecod")
    for label, key in (
        ("mean ROC-AUC", "roc_auc"),
        ("mean average precision", "average_precision"),
    ):
        cells = _readme_row(label)
        for cell, method in zip(cells, methods, strict=True):
            mean = cell.split(" (")[0]  # "0.796 (31 sets)": a method that failed on some
            assert mean == f"{_mean_of(quality, method, key, 'dataset'):.3f}", (label, method)
    images = json.loads((results / "images.json").read_text())["results"]
    vae, _, iforest, *_ = _readme_row("one-class MNIST")
    assert vae == f"{_mean_of(images, 'vae_core', 'roc_auc', 'digit'):.3f}"
    assert iforest == f"{_mean_of(images, 'iforest', 'roc_auc', 'digit'):.3f}"


def test_quality_reuses_and_merges_earlier_runs(tmp_path):
    """--reuse takes the peers' results from an earlier run (same splits) instead of fitting
    them again; --merge prints the tables of several runs, with the verdict table."""
    _tiny_set(tmp_path)
    first, second, both = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "ab.json"
    done = _run(str(BENCH / "quality.py"), str(tmp_path), "--seeds", "1", "--methods", "iforest",
                "--json", str(first))  # fmt: skip
    assert done.returncode == 0, done.stderr
    earlier = json.loads(first.read_text())["results"][0]
    done = _run(
        str(BENCH / "quality.py"), str(tmp_path), "--seeds", "1",
        "--methods", "vae_core", "iforest", "--vae-param", "epochs=2",
        "--reuse", str(first), "--json", str(second),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reused = [r for r in json.loads(second.read_text())["results"] if r["method"] == "iforest"]
    assert reused[0]["fit_seconds"] == earlier["fit_seconds"]  # taken over, not fitted again
    done = _run(str(BENCH / "quality.py"), "--merge", str(first), str(second), "--json", str(both))
    assert done.returncode == 0, done.stderr
    assert "best peer per set" in done.stdout and "| vae_core |" in done.stdout
    assert {r["method"] for r in json.loads(both.read_text())["results"]} == {"vae_core", "iforest"}


def test_quality_runs_the_pyod_peers(tmp_path):
    pytest.importorskip("pyod")
    _tiny_set(tmp_path)
    done = _run(str(BENCH / "quality.py"), str(tmp_path), "--seeds", "1",
                "--methods", "mcd", "knn", "ecod")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for method in ("mcd", "knn", "ecod"):
        assert f"| {method} |" in done.stdout
    assert "failed" not in done.stdout


def test_image_code_length_is_in_nats_and_follows_complexity():
    """The input-complexity estimate of benchmarks/images.py --complexity: a lossless code
    length in nats (whole bytes), shorter for a blank image than for noise, for both
    compressors."""
    import images  # benchmarks/images.py

    rng = np.random.default_rng(0)
    blank = np.zeros((1, 28, 28), dtype="uint8")
    noise = rng.integers(0, 256, size=(1, 28, 28), dtype="uint8")
    for compressor in images.COMPRESSORS:
        lengths = images.code_length_nats(np.concatenate([blank, noise]), compressor)
        assert lengths[0] < lengths[1]
        # noise needs about 8 bits a pixel: 784 bytes = 784 * 8 ln 2 nats, within the headers
        assert 0.9 * 784 * 8 * np.log(2) < lengths[1] < 1.3 * 784 * 8 * np.log(2)
        np.testing.assert_allclose(lengths / (8 * np.log(2)), np.round(lengths / (8 * np.log(2))))


def test_background_images_replace_about_the_rate_of_pixels_deterministically():
    """benchmarks/images.py --background: the background model's training images (Ren et al.,
    2019) differ from the originals in about ``rate`` of the pixels, the same for a seed."""
    import images  # benchmarks/images.py

    originals = np.full((50, 28, 28), 7, dtype="uint8")
    noisy = images.perturb(originals, 0.2, seed=0)
    changed = (noisy != originals).mean()
    assert 0.18 < changed < 0.21  # a replacement may draw the same value (1/256)
    np.testing.assert_array_equal(noisy, images.perturb(originals, 0.2, seed=0))
    assert (originals == 7).all()  # the input is left as it was


def test_whiteners_leave_the_outliers_out():
    """benchmarks/whitening.py: on correlated Gaussian rows with 5% far outliers, MinCovDet's
    whitening maps the clean rows to unit covariance (the outliers do not inflate it); the
    shrinkage whitening (central half by per-column distance, not affine-equivariant, so not
    white) still puts every outlier beyond the clean rows."""
    import whitening  # benchmarks/whitening.py

    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    X = rng.normal(size=(2_000, 4)) @ A.T
    X[:100] += 30.0
    keep, location, W = whitening.whitener(X, seed=0, mode="mcd")
    np.testing.assert_allclose(np.cov(((X[100:, keep] - location) @ W).T), np.eye(4), atol=0.1)
    for mode in ("mcd", "lw"):
        keep, location, W = whitening.whitener(X, seed=0, mode=mode)
        norms = np.linalg.norm((X[:, keep] - location) @ W, axis=1)
        assert norms[:100].min() > np.quantile(norms[100:], 0.99)
    assert whitening.whitener(X[:12], seed=0, mode="mcd") is None  # too few rows: not run


def test_combine_scores_averages_members_in_nats(tmp_path):
    """Two settings' scores averaged per row: a set where each alone ranks one anomaly last
    but their mean ranks both first shows the mean is what is scored, per half."""
    import combine_scores

    y = np.array([0, 0, 0, 1, 1])
    a = np.array([0.0, 1.0, 2.0, 9.0, 1.5])  # ranks anomaly 4 below a normal row
    b = np.array([0.0, 1.0, 2.0, 1.5, 9.0])  # ranks anomaly 3 below it
    arrays = {}
    for d in (protocol.HALVES["choose"][0], protocol.HALVES["confirm"][0]):
        arrays[f"y|{d}|0"] = y
        arrays[f"a|{d}|0|0|nelbo"], arrays[f"b|{d}|0|0|nelbo"] = a, b
        arrays[f"iforest|{d}|0|0|iforest"] = -a
    out = combine_scores.table(arrays, [("a",), ("b",), ("a", "b")])
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "| 0.8333 | 0.8333 |" in rows["a"] and "| 1.0000 | 1.0000 |" in rows["a+b"]
    assert "+0.1667 | +0.1667" in rows["a+b"]
