"""The device helpers: the TF32 switch, the bf16 probe of a chosen GPU, ``--device cuda:N``."""
from __future__ import annotations

import warnings

import pytest
import torch

from utils import devices


@pytest.fixture
def tf32_restored():
    """Put the process-wide TF32 settings back as they were after the test."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("enabled, precision", [(True, "tf32"), (False, "ieee")])
def test_set_tf32_sets_matmul_and_convolutions_without_warnings(tf32_restored, enabled, precision):
    torch.backends.cuda.matmul.allow_tf32 = not enabled
    torch.backends.cudnn.allow_tf32 = not enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        devices.set_tf32(enabled)
    assert torch.backends.cuda.matmul.fp32_precision == precision
    assert torch.backends.cudnn.allow_tf32 is enabled
    # What torch.export (and so the ONNX export) reads must not raise afterwards.
    assert torch._C._get_cudnn_allow_tf32() is enabled
    assert torch._C._get_cublas_allow_tf32() is enabled


class FakeCuda:
    """What a machine with ``count`` CUDA devices of the given compute capabilities answers."""

    def __init__(self, monkeypatch, capabilities):
        self.capabilities, self.current, self.asked = list(capabilities), 0, []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.capabilities))
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "get_device_capability", self.capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation

    def set_device(self, index):
        self.current = index

    def capability(self, device=None):
        device = torch.device(device) if device is not None else torch.device("cuda", self.current)
        index = device.index if device.index is not None else self.current
        self.asked.append(index)
        return self.capabilities[index]


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_probe_counts_only_bf16_units(monkeypatch, capability, native):
    FakeCuda(monkeypatch, [capability])
    bf16, why = devices.native_bf16(torch.device("cuda", 0))
    assert bf16 is native
    assert ".".join(map(str, capability)) in why


def test_bf16_probe_asks_the_chosen_gpu_not_the_current_one(monkeypatch):
    cuda = FakeCuda(monkeypatch, [(9, 0), (7, 0)])  # a Hopper as GPU 0, a V100 as GPU 1
    assert devices.native_bf16(torch.device("cuda", 1))[0] is False
    assert devices.native_bf16(torch.device("cuda", 0))[0] is True
    assert cuda.asked == [1, 0]


def test_bf16_auto_trains_in_fp32_on_a_gpu_without_bf16_units(monkeypatch):
    from utils.training.loop import autocast_choice
    FakeCuda(monkeypatch, [(7, 5)])
    bf16, why = autocast_choice("auto", torch.device("cuda", 0))
    assert not bf16 and "no bf16 units" in why


@pytest.mark.parametrize("name, expected", [("cuda:2", 2), ("cuda", 0)])
def test_choose_device_makes_the_chosen_gpu_current(monkeypatch, name, expected):
    cuda = FakeCuda(monkeypatch, [(8, 0)] * 4)
    cuda.current = 3
    assert devices.choose_device(name) == torch.device("cuda", expected)
    assert cuda.current == expected


def test_choose_device_gives_each_local_rank_its_gpu(monkeypatch):
    cuda = FakeCuda(monkeypatch, [(8, 0)] * 2)
    assert devices.choose_device("cuda", local_rank=1, world_size=2, local_world_size=2) == torch.device("cuda", 1)
    assert cuda.current == 1


@pytest.mark.parametrize("gpus, local_world, ok", [(1, 2, False), (2, 4, False), (2, 2, True), (1, None, True)])
def test_two_processes_on_one_gpu_are_refused_before_nccl(monkeypatch, gpus, local_world, ok):
    """torchrun's LOCAL_WORLD_SIZE processes share the node's visible GPUs: more processes than GPUs
    would put two on one GPU. Without it (srun gives each task its own GPU) one GPU is the task's."""
    cuda = FakeCuda(monkeypatch, [(8, 0)] * gpus)
    if ok:
        assert devices.choose_device("cuda", local_rank=1 % gpus, world_size=2, local_world_size=local_world).type == "cuda"
        return
    with pytest.raises(devices.DeviceError) as err:
        devices.choose_device("cuda", local_rank=1, world_size=4, local_world_size=local_world)
    message = str(err.value)
    assert "\n" not in message and f"{local_world} processes on this node but {gpus} CUDA device(s)" in message
    assert f"--nproc_per_node={gpus}" in message and cuda.current == 0
