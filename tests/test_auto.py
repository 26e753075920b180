"""Fast by default (utils/inference/auto.py): what --precision auto picks and why, that it costs no
visible quality, the protocols' fp32 default, and a restore that imports only what it uses."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage import data as skimage_data

import demo_test_syn
import networks
from utils import devices
from utils.errors import UserError
from utils.image_io import to_uint8
from utils.inference import Restorer, load_model, restorer_from_args
from utils.inference.auto import RunPlan, plan_run
from utils.metrics import calculate_psnr

COMPACT = networks.default_weights("denoising-syn")


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return networks.build_model("denoising-syn", n_feat=[8, 16], dep_S=2, n_resblocks=1).eval()


@pytest.mark.parametrize("native, expected", [(True, ("bf16", "eager")), (False, ("fp32", "fast"))])
def test_auto_on_the_cpu_follows_the_bf16_probe(monkeypatch, tiny, native, expected):
    monkeypatch.setattr(devices, "cpu_bf16", lambda: (native, "probed"))
    plan = plan_run(tiny, "auto")
    assert (plan.precision, plan.backend) == expected and plan.reason == "auto: probed"
    assert plan.line.startswith("run: ") and "(auto: probed)" in plan.line
    assert plan_run(tiny, "auto", "eager").precision == expected[0]
    assert (plan_run(tiny, "auto", "fast").precision, plan_run(tiny, "auto", "fast").backend) == ("fp32", "fast")


def test_explicit_choices_and_refusals(monkeypatch, tiny):
    monkeypatch.setattr(devices, "cpu_bf16", lambda: (False, "no bf16 units"))
    assert plan_run(tiny, "fp32") == RunPlan("fp32", "eager", "--precision fp32")
    assert plan_run(tiny, "bf16").reason == "--precision bf16; slow here: no bf16 units"
    assert plan_run(tiny, "fp32", "fast").backend == "fast"
    for precision, backend, message in (("fp16", None, "unknown precision 'fp16'"),
                                        ("fp32", "tvm", "unknown backend 'tvm'"),
                                        ("auto", "onnx", "--backend onnx runs an exported .onnx file")):
        with pytest.raises(UserError, match=message):
            plan_run(tiny, precision, backend)


def test_cpu_probe_is_cached_and_explains_itself():
    native, why = devices.cpu_bf16()
    assert devices.cpu_bf16() == (native, why) and devices.cpu_bf16.cache_info().hits >= 1
    assert why and isinstance(native, bool)


@pytest.mark.slow  # a fresh interpreter: a few seconds
def test_probe_honours_a_onednn_limited_to_avx2(root):
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", "from utils.devices import cpu_bf16; print(cpu_bf16())"],
                          cwd=root, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.startswith("(False, ")


def test_auto_and_fp32_restorations_agree_to_50_db():
    clean = skimage_data.chelsea()[100:196, 150:246] / 255.0
    noisy = (clean + np.random.default_rng(0).standard_normal(clean.shape) * 25 / 255).astype(np.float32)
    fp32 = Restorer(load_model("denoising-syn", None, COMPACT, torch.device("cpu")), precision="fp32")(noisy)
    chosen = Restorer(load_model("denoising-syn", None, COMPACT, torch.device("cpu")), precision="auto")(noisy)
    assert calculate_psnr(to_uint8(chosen.image), to_uint8(fp32.image)) >= 50


def test_restores_default_to_auto_and_protocols_to_fp32(capsys):
    args = demo_test_syn.build_parser().parse_args([])
    assert args.precision is None and args.backend is None
    restorer = restorer_from_args(args, "denoising-syn", COMPACT)
    assert restorer.plan.reason.startswith("auto: ")
    assert restorer.plan.line in capsys.readouterr().out.splitlines()
    protocol = restorer_from_args(args, "denoising-syn", COMPACT, precision="fp32")
    assert (protocol.precision, protocol.plan.backend) == ("fp32", "eager")
    asked = restorer_from_args(demo_test_syn.build_parser().parse_args(["--precision", "auto"]), "denoising-syn",
                               COMPACT, precision="fp32")
    assert asked.plan.reason.startswith("auto: ")


@pytest.mark.slow  # a fresh interpreter per demo: a few seconds each
@pytest.mark.parametrize("demo", ["demo_test_syn", "demo_test_sisr", "demo_test_denoising_real"])
def test_demos_import_no_training_code_nor_matplotlib(root, demo):
    code = (f"import sys, {demo}; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"('matplotlib', 'loss', 'onnx', 'onnxruntime', 'tensorboard') or m.startswith('utils.training')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    if demo == "demo_test_syn":
        code = (f"import sys, {demo}; print(sorted(m for m in sys.modules if m in ('datasets.denoising_syn', "
                f"'datasets.camera_noise', 'datasets.sisr', 'datasets.real', 'torch.utils.flop_counter')))")
        done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "[]"
