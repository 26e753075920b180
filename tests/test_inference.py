"""The inference floor (utils/inference/): tiling, model loading, device and precision, CLI helpers."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import networks
from utils import inference
from utils.devices import choose_device
from utils.errors import UserError
from utils.inference import (DEFAULT_TILE_OVERLAP, InputImageError, Restorer, load_model, markdown_table,
                             report_errors, run_model, tile_spans)
from utils.inference.tiling import axis_weights
from helpers import tiny_architecture, tiny_scale

SMALL_SYN = dict(n_feat=[8, 16, 24], n_resblocks=1, dep_S=2)
SMALL_SR = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=2)


def _small(task, **kwargs):
    torch.manual_seed(0)
    return networks.build_model(task, **kwargs).eval()


@pytest.mark.parametrize("length", [1, 5, 64, 65, 97, 131, 200, 257, 1001])
@pytest.mark.parametrize("tile,overlap,multiple", [(32, 8, 4), (64, 16, 8), (96, 64, 4), (48, 44, 4)])
def test_tile_spans_cover_and_align(length, tile, overlap, multiple):
    spans = tile_spans(length, tile, overlap, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s1 % multiple == 0 and s0 < s1
        assert e0 - s1 >= min(overlap, e0 - s0)  # neighbours overlap by at least `overlap`
    assert all(e - s <= tile + multiple - 1 for s, e in spans)
    for scale in (1, 3):
        ramps, total = axis_weights(spans, scale)
        assert total.min() > 0
        summed = torch.zeros(length * scale)
        for (s, e), ramp in zip(spans, ramps):
            summed[s * scale:e * scale] += ramp
        assert torch.allclose(summed, total)


@pytest.mark.parametrize("task", list(networks.TASKS))
def test_tiled_restoration_matches_whole_image(task):
    """Every task: the restored image (first output) and the variance (last) of a tiled run stay within
    one grey level of the whole-image run; every output keeps its shape."""
    net, sf = _small(task, **tiny_architecture(task)), tiny_scale(task)
    scale = () if sf is None else (sf,)
    x = torch.rand(1, 3, 131, 197, generator=torch.Generator().manual_seed(1))
    whole, tiled = run_model(net, x, *scale, tile=0)
    assert not tiled
    parts, tiled = run_model(net, x, *scale, tile=2 * DEFAULT_TILE_OVERLAP)
    assert tiled and [p.shape for p in parts] == [w.shape for w in whole] and len(whole) == len(net.OUTPUTS)
    assert (parts[0] - whole[0]).abs().max() <= 1 / 255
    assert (parts[-1].sqrt() - whole[-1].sqrt()).abs().max() <= 1 / 255


def test_tiled_sr_matches_whole_image_and_keeps_global_estimates():
    net = _small("sisr", **SMALL_SR)
    x = torch.rand(1, 3, 61, 47, generator=torch.Generator().manual_seed(2))
    (mu, kinfo, var), _ = run_model(net, x, 3, tile=0)
    (mu_t, kinfo_t, var_t), tiled = run_model(net, x, 3, tile=32, overlap=12)
    assert tiled and mu_t.shape == (1, 3, 183, 141)
    assert (mu_t - mu).abs().max() <= 1 / 255
    assert torch.equal(kinfo_t, kinfo) and torch.equal(var_t, var)
    assert not net.SNet._forward_hooks and not net.KNet._forward_hooks  # pins removed


def test_tiles_bound_the_network_input():
    net = _small("denoising-syn", **SMALL_SYN)
    seen = []
    net.RNet.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    run_model(net, torch.rand(1, 3, 101, 90), tile=48, overlap=16)
    assert len(seen) == 9 and max(max(s) for s in seen) <= 48 + 3


def test_restorer_outputs_and_small_image():
    restorer = Restorer(_small("denoising-syn", **SMALL_SYN))
    out = restorer(np.random.default_rng(0).random((23, 31, 3), dtype=np.float32))
    assert out.image.shape == (23, 31, 3) and out.image.dtype == np.float32
    assert 0 <= out.image.min() and out.image.max() <= 1
    assert out.noise_var.shape == (23, 31, 1) and out.kinfo is None and not out.tiled
    assert np.allclose(out.noise_std_255, np.sqrt(out.noise_var) * 255)
    with pytest.raises(InputImageError, match=r"image too small: 1 x 1 \(min 4 x 4\)"):
        restorer(np.zeros((1, 1, 3), np.float32))


def test_bf16_autocast_on_cpu_runs_close_to_fp32():
    net = _small("denoising-syn", **SMALL_SYN)
    x = torch.rand(1, 3, 40, 36)
    (mu, _), _ = run_model(net, x, tile=0)
    (mu_bf, _), _ = run_model(net, x, tile=0, precision="bf16")
    assert mu_bf.dtype == torch.float32
    assert (mu_bf - mu).abs().max() < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_and_tiling():
    net = _small("denoising-syn", **SMALL_SYN).cuda()
    x = torch.rand(1, 3, 157, 203)
    (mu, _), _ = run_model(net, x, tile=0)
    (mu_t, _), _ = run_model(net, x, tile=80)
    assert (mu_t - mu).abs().max() <= 1 / 255
    (mu_bf, _), _ = run_model(net.to(memory_format=torch.channels_last), x, tile=80, precision="bf16")
    assert (mu_bf - mu).abs().max() < 0.1


def _save(tmp_path, name, task, arch=True, **kwargs):
    net = _small(task, **kwargs)
    ckpt = {"model_state_dict": net.state_dict()}
    if arch:
        ckpt["arch"] = {"task": task, "kwargs": kwargs}
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("task", list(networks.TASKS))
def test_load_model_builds_from_arch_entry(tmp_path, task):
    kwargs = tiny_architecture(task)
    path = _save(tmp_path, "small.pth", task, **kwargs)
    net = load_model(task, str(path), tmp_path / "unused.pth", torch.device("cpu"), sf=tiny_scale(task))
    want = _small(task, **kwargs).state_dict()
    assert net.state_dict().keys() == want.keys() and all(torch.equal(net.state_dict()[k], want[k]) for k in want)
    assert not net.training


def test_load_model_errors(tmp_path, released_checkpoint):
    cpu = torch.device("cpu")
    with pytest.raises(UserError, match="missing.pth: pass --ckpt_path FILE"):
        load_model("denoising-syn", "", tmp_path / "missing.pth", cpu)
    sr = _save(tmp_path, "sr.pth", "sisr", **SMALL_SR)
    with pytest.raises(UserError, match="holds a 'sisr' model; this demo needs 'denoising-syn'"):
        load_model("denoising-syn", str(sr), sr, cpu)
    real = released_checkpoint("denoising-real")
    with pytest.raises(networks.CheckpointError, match="these weights are a 'denoising-real' model"):
        load_model("denoising-syn", str(real), tmp_path / "x", cpu)
    torch.save({"model_state_dict": {}, "arch": {"task": "denoising-syn", "kwargs": {"bogus": 1}}},
               tmp_path / "bad_arch.pth")
    with pytest.raises(UserError, match="cannot build its architecture"):
        load_model("denoising-syn", str(tmp_path / "bad_arch.pth"), tmp_path / "x", cpu)


def test_choose_device():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device|unsupported device"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            choose_device("cuda")


def test_tiling_flags_are_checked():
    net = _small("denoising-syn", **SMALL_SYN)
    with pytest.raises(UserError, match="must be larger than --tile_overlap"):
        Restorer(net, tile=64, overlap=64)
    with pytest.raises(UserError, match=">= 0"):
        Restorer(net, tile=-1)
    assert Restorer(net, tile=0, overlap=999).tile == 0


def test_report_errors(capsys):
    def fail(exc):
        def run(_argv):
            raise exc
        return run

    assert report_errors(lambda argv: 0) == 0
    assert report_errors(fail(UserError("bad thing"))) == 1
    assert capsys.readouterr().err == "error: bad thing\n"
    assert report_errors(fail(PermissionError(13, "Permission denied", "/x/y.png"))) == 1
    assert capsys.readouterr().err == "error: Permission denied: /x/y.png\n"
    oom = RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes")
    assert report_errors(fail(oom)) == 1
    assert capsys.readouterr().err == "error: out of memory; use a smaller --tile (e.g. --tile 256)\n"
    assert report_errors(fail(RuntimeError("shape mismatch"))) == 1  # a bug: one line and a log (tests/test_guard.py)
    assert capsys.readouterr().err.startswith("error: unexpected error while starting: RuntimeError: shape mismatch")
    with pytest.raises(ZeroDivisionError):  # with --debug bugs keep their traceback
        report_errors(fail(ZeroDivisionError()), ["--debug"])
    assert report_errors(fail(networks.CheckpointError("w.pth: not a checkpoint"))) == 1  # networks' own class
    assert capsys.readouterr().err == "error: w.pth: not a checkpoint\n"


def test_foundation_modules_load_without_torch_or_networks():
    code = ("import sys, utils.errors, utils.config, utils.image_io, utils.locking, utils.image_meta; "
            "print([m for m in ('torch', 'networks') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


def test_table_writers(tmp_path):
    rows = [{"image": "a", "psnr": 30.5}, {"image": "b", "psnr": 28.25}]
    inference.write_csv(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text() == "image,psnr\na,30.5\nb,28.25\n"
    inference.write_json(tmp_path / "t.json", rows)
    assert json.loads((tmp_path / "t.json").read_text()) == rows
    assert markdown_table(["image", "PSNR"], [["a", "30.50"], ["bb", "28.25"]]) == (
        "| image | PSNR  |\n|-------|-------|\n| a     | 30.50 |\n| bb    | 28.25 |\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]  # no temp files left
