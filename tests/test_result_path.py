"""bench.common's result naming: one scheme, the device class from the CPU model or the GPU name."""
import pytest
import torch

from bench import common
from bench.common import RESULTS_DIR, device_class, result_path


@pytest.mark.parametrize("gpu, expected", [("NVIDIA H100 80GB HBM3", "nvidia-h100"),
                                           ("NVIDIA A100-SXM4-40GB", "nvidia-a100"),
                                           ("NVIDIA H100 PCIe", "nvidia-h100"),
                                           ("Tesla V100-SXM2-16GB", "tesla-v100"),
                                           ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090")])
def test_gpu_class(monkeypatch, gpu, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    assert device_class(torch.device("cuda", 0)) == expected


@pytest.mark.parametrize("cpu, expected", [("AMD EPYC (family 26 model 2)", "amd-epyc-zen5"),
                                           ("AMD EPYC 9654 96-Core Processor (family 25 model 17)", "amd-epyc-zen4"),
                                           ("AMD EPYC 7763 64-Core Processor (family 25 model 1)", "amd-epyc-zen3"),
                                           ("AMD EPYC 7742 64-Core Processor (family 23 model 49)", "amd-epyc-zen2")])
def test_cpu_class(monkeypatch, cpu, expected):
    monkeypatch.setattr(common, "cpu_model", lambda: cpu)
    for name in common.CAPABILITY_LIMITS:
        monkeypatch.delenv(name, raising=False)
    assert device_class(torch.device("cpu")) == expected
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert device_class(torch.device("cpu")) == expected + "-emulated"


def test_result_path_scheme(tmp_path):
    assert result_path("sisr", "sr_blur", "nvidia-h100") == RESULTS_DIR / "sr_blur_sisr_nvidia-h100.json"
    assert result_path("denoising-syn", "gpu_memory", "amd-epyc-zen5", ".md", tmp_path) == \
        tmp_path / "gpu_memory_denoising-syn_amd-epyc-zen5.md"
    cpu = result_path("sisr", "sr_blur", device_class(torch.device("cpu")))
    assert cpu != result_path("sisr", "sr_blur", "nvidia-h100")
