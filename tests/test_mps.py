"""Apple MPS (utils/devices.py): --device mps, and auto picking it where there is no CUDA, in the demos
and trainers; where it is absent, one line. This machine has no Mac GPU: availability is simulated."""
from types import SimpleNamespace

import pytest
import torch

import demo_test_syn
from utils import devices
from utils.devices import DeviceError, choose_device, device_name
from utils.errors import UserError
from utils.inference.auto import plan_run
from one_line import one_line_error as _error


def test_auto_picks_mps_when_there_is_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert choose_device("auto") == torch.device("mps") == choose_device("mps")
    assert device_name(torch.device("mps")) == "Apple MPS"
    with pytest.raises(DeviceError, match="DDP does not run on MPS; start one process"):
        choose_device("mps", local_rank=1, world_size=2)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")


def test_absent_mps_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert demo_test_syn.main(["--device", "mps", "-o", str(tmp_path / "out")]) == 1
    assert "--device mps: Apple MPS is not available here" in _error(capsys)


def test_mps_runs_fp32_only():
    on_mps = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("mps"))]))
    for precision in ("auto", "fp32"):
        plan = plan_run(on_mps, precision)
        assert (plan.precision, plan.backend) == ("fp32", "eager")
    with pytest.raises(UserError, match="--precision bf16 is not offered on Apple MPS; use fp32"):
        plan_run(on_mps, "bf16")
