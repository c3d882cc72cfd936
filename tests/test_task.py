"""The per-process pieces of a run: the device each process computes on, and the shared client model."""

from __future__ import annotations

import pytest
import torch

from fl_dp.config import ConfigError, RunConfig
from fl_dp.inprocess import run_inprocess
from fl_dp.task import device_for, shared_client_model

SMALL = dict(
    dataset="breast-cancer", model="logreg", strategy="alpha-normec", num_clients=3, clients_per_round=3, num_server_rounds=3,
    batch_size=16,
)


@pytest.mark.parametrize("name", ["gpu", "cuda0", "cuda:", "CPU", "cuda:-1", " cpu"])
def test_a_device_that_is_no_device_name_is_refused_by_key(name):
    with pytest.raises(ConfigError, match="device"):
        RunConfig(device=name)


def test_auto_is_the_cpu_where_this_process_sees_no_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device_for(RunConfig(device="auto")).type == expected
    assert device_for(RunConfig(device="cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this process sees a CUDA device")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_asked_for_without_a_gpu_is_a_config_error_naming_the_key(name):
    with pytest.raises(ConfigError, match=f"device '{name}': this process sees"):
        device_for(RunConfig(device=name))


def test_clients_of_a_process_share_one_model_per_device():
    cfg = RunConfig(**SMALL, device="cpu")
    model = shared_client_model(cfg)
    assert shared_client_model(cfg.replace(strategy="clip21")) is model
    assert next(model.parameters()).device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_on_cuda_follows_the_cpu_trajectory():
    # the algorithms' vectors stay on the CPU (same noise, same cohorts); only the gradients' float
    # arithmetic differs between the devices
    cfg = RunConfig(**SMALL, target_epsilon=8.0, privacy_model="central")
    on_cpu = run_inprocess(cfg.replace(device="cpu"))
    on_gpu = run_inprocess(cfg.replace(device="cuda"))
    assert list(on_cpu["round"]) == list(on_gpu["round"])
    assert on_gpu["test-accuracy"].to_numpy() == pytest.approx(on_cpu["test-accuracy"].to_numpy(), abs=0.02)
    assert on_gpu["test-loss"].to_numpy() == pytest.approx(on_cpu["test-loss"].to_numpy(), rel=1e-3)
