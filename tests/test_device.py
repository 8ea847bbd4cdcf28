"""``device``: cpu, cuda or cuda:N for training and scoring; a model fitted on a GPU scores on
the CPU of a machine without one. The GPU cases run only where torch sees a GPU."""

import json

import numpy as np
import pytest
import torch

from vae_core import VAEDetector
from vae_core.foundations.config import PipelineConfig

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no GPU on this machine (torch sees none)")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda0", "CPU", ""])
def test_the_config_refuses_a_device_torch_does_not_name(device):
    with pytest.raises(ValueError, match=r"training\.device"):
        PipelineConfig.model_validate({"training": {"device": device}})


@pytest.mark.skipif(GPU, reason="this machine has a GPU")
def test_fitting_on_cuda_without_a_gpu_says_so(mixed_data):
    with pytest.raises(ValueError, match="sees no GPU"):
        VAEDetector(device="cuda", epochs=1).fit(mixed_data)


def test_a_model_saved_with_a_gpu_device_scores_on_the_cpu_here(fitted_mixed, mixed_data, tmp_path):
    fitted_mixed.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["params"]["device"] = "cuda:0"  # as a model fitted on a GPU is saved
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    loaded = VAEDetector.load(tmp_path / "m")
    assert loaded.device == ("cuda:0" if GPU else "cpu")
    if not GPU:
        np.testing.assert_array_equal(
            loaded.anomaly_score(mixed_data), fitted_mixed.anomaly_score(mixed_data)
        )


@needs_gpu
def test_training_and_scoring_on_the_gpu(mixed_data, tmp_path):
    det = VAEDetector(device="cuda", epochs=5, hidden_dims=(32, 16), latent_dim=2).fit(mixed_data)
    assert next(det.model_.parameters()).is_cuda
    scores = det.anomaly_score(mixed_data)
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, det.anomaly_score(mixed_data))  # deterministic
    det.save(tmp_path / "m")
    on_cpu = VAEDetector.load(tmp_path / "m").set_params(device="cpu")
    on_cpu.model_ = on_cpu.model_.cpu()
    np.testing.assert_allclose(on_cpu.anomaly_score(mixed_data), scores, rtol=1e-4, atol=1e-3)


def test_scoring_threads_share_the_cores_out():
    from vae_core.network.devices import threads_per_worker

    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=2) == 1  # never below one
    assert threads_per_worker(2, cores=8) == 4
    assert threads_per_worker(1) >= 1
    with pytest.raises(ValueError, match="at least 1"):
        threads_per_worker(0)


def test_intra_op_threads_are_restored_after_the_block_even_on_error():
    from vae_core.network.devices import intra_op_threads

    before = torch.get_num_threads()
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), intra_op_threads(1):
        raise RuntimeError("scoring failed")
    assert torch.get_num_threads() == before


def test_one_scoring_thread_keeps_torchs_count_several_share_the_cores():
    from vae_core.network.devices import (
        intra_op_threads,
        scoring_threads,
        shared_cores,
        threads_per_worker,
    )

    before = torch.get_num_threads()
    with intra_op_threads(1):
        assert scoring_threads(1) == 1  # a user's limit is kept, not raised to the cores
        with shared_cores(1):
            assert torch.get_num_threads() == 1
    assert scoring_threads(2) == threads_per_worker(2)
    with shared_cores(2):
        assert torch.get_num_threads() == threads_per_worker(2)
    assert torch.get_num_threads() == before


def test_the_flow_shares_the_cores_only_among_threads_of_its_own_process():
    from flows.score import _in_this_process

    def cfg(**scoring):
        return PipelineConfig.model_validate({"scoring": scoring})

    assert _in_this_process(cfg(task_runner="threads"))
    assert _in_this_process(cfg(task_runner="dask"))  # a local cluster of threads
    assert not _in_this_process(cfg(task_runner="dask", dask_address="tcp://127.0.0.1:8786"))
