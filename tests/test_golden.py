"""Issue "One path for tables and images": a change of structure leaves the numbers alone.

``tests/data/golden.json`` holds the scores, the threshold and the registered model's outputs
(``predict``'s scores and probabilities) on the embedded cardio table and the MNIST sample,
written by ``python -m tests.golden_run --write`` at the commit it records, before the library
was split into its layers. This test runs the same commands now and compares.

On the machine the file was written on (same CPU model, torch and numpy builds) the comparison
is bit for bit: the SHA-256 of every output. Elsewhere floating-point rounding may differ in the
last bits (between one and two torch threads on the MNIST case we measured a largest relative
difference of 3.4e-10), so there the scores and the threshold are compared to a relative 1e-6
and the flags must agree exactly.
"""

import json

import numpy as np
import pytest

from tests import golden_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs():
    return golden_run.run_all()


@pytest.fixture(scope="module")
def golden():
    return json.loads(golden_run.GOLDEN.read_text())


@pytest.mark.parametrize("case", sorted(golden_run.CASES))
def test_outputs_unchanged(case, runs, golden):
    now, then = runs[case], golden["cases"][case]
    assert now["n_flagged"] == then["n_flagged"]
    if golden["machine"] == golden_run.machine():
        for key in ("scores_sha256", "flags_sha256", "predict_sha256", "probability_sha256"):
            assert now[key] == then[key], f"{case}: {key} changed since {golden['commit']}"
        assert now["threshold"] == then["threshold"]
    else:
        assert now["flags_sha256"] == then["flags_sha256"]
        np.testing.assert_allclose(now["scores"], then["scores"], rtol=1e-6)
        np.testing.assert_allclose(now["predict"], then["predict"], rtol=1e-6)
        assert now["threshold"] == pytest.approx(then["threshold"], rel=1e-6)


def test_registered_model_scores_as_the_command_line(runs):
    """The registry's pyfunc model and ``vae-anomaly score`` give the same bytes."""
    for case in runs.values():
        assert case["predict_sha256"] == case["scores_sha256"]
