"""What the protocols report beside PSNR / SSIM: --save_images (the restored images per dataset and
case or kernel), LPIPS in the SR protocol when the lpips package and its weights are here (else one
note, no column), the model's parameters and FLOPs at 256 x 256 in every JSON and table, and the
synthetic demo's test sets found by default."""
import json
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import demo_test_sisr
import demo_test_syn
import networks
from utils.inference import perceptual
from utils.inference.complexity import model_complexity
from one_line import one_line_error as _error

SMALL = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2)
SMALL_SR = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=1)


def _dataset(root, name, shared, source, size):
    folder = root / name
    folder.mkdir(parents=True)
    im = cv2.imread(str(shared / "testsets" / source))
    cv2.imwrite(str(folder / "one.png"), im[:size, :size])
    return root


def test_syn_protocol_saves_images_and_records_the_model(tmp_path, small_checkpoint, shared):
    ckpt = small_checkpoint("denoising-syn", **SMALL)
    data = _dataset(tmp_path / "data", "CBSD68", shared, "CBSD68/101085.png", 48)
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "--protocol", "iid", "--data_root",
                               str(data), "--datasets", "CBSD68", "-o", str(tmp_path / "out"), "--save_images",
                               "--prefix", "p"]) == 0
    saved = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.png"))
    assert [str(p) for p in saved] == [f"virnet_denoising_iid_p_images/CBSD68/sigma{s}/one.png" for s in (15, 25, 50)]
    record = json.loads((tmp_path / "out/virnet_denoising_iid_p.json").read_text())
    net = networks.build_model("denoising-syn", **SMALL)
    assert record["model"] == model_complexity(net)
    assert record["model"]["parameters"] == sum(p.numel() for p in net.parameters())
    assert (record["strength"], record["noise_map"]) == (1.0, None)
    table = (tmp_path / "out/virnet_denoising_iid_p.md").read_text()
    assert f"Model: {record['model']['parameters'] / 1e6:.2f} M parameters" in table and "at 256 x 256" in table


def test_flops_count_multiply_accumulates_at_256():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert model_complexity(conv) == {"parameters": 8 * 3 * 9 + 8, "flops_256": 256 * 256 * 8 * 3 * 9}
    sr = networks.build_model("sisr", **SMALL_SR)  # a 64 x 64 LR input for a 256 x 256 output at x4
    at_256, at_512 = (model_complexity(sr, sf=4, side=side)["flops_256"] for side in (256, 512))
    assert 3.9 * at_256 < at_512 <= 4 * at_256  # convolutions scale with the pixels, the K-Net's head does not


class _FakeLPIPS(nn.Module):
    """Stands in for lpips.LPIPS: the mean absolute difference of the [-1, 1] inputs."""

    def __init__(self, net, verbose):
        super().__init__()
        assert net == "alex"

    def forward(self, a, b):
        assert a.min() >= -1 and a.max() <= 1
        return (a - b).abs().mean()


def _sr_protocol(tmp_path, ckpt, data, out, *extra):
    return demo_test_sisr.main(["--ckpt_path", str(ckpt), "--device", "cpu", "--sf", "4", "--noise_level", "2.55",
                                "--data_root", str(data), "--datasets", "Set5", "-o", str(tmp_path / out), *extra])


def test_sr_protocol_lpips_when_available_else_one_note(tmp_path, small_checkpoint, shared, monkeypatch, capsys):
    ckpt = small_checkpoint("sisr", **SMALL_SR)
    data = _dataset(tmp_path / "data", "Set5", shared, "Set5/bird_GT.png", 96)
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips fails
    assert _sr_protocol(tmp_path, ckpt, data, "none") == 0
    err = capsys.readouterr().err
    assert err.count("note: LPIPS left out: the lpips package is not installed") == 1
    record = json.loads((tmp_path / "none/virnet_sisr_x4_nl255.json").read_text())
    assert "lpips" not in record["images"][0] and record["model"]["flops_256"] > 0
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=_FakeLPIPS))
    monkeypatch.setattr(perceptual, "alexnet_weights_file", lambda: None)
    assert _sr_protocol(tmp_path, ckpt, data, "fake", "--save_images") == 0
    record = json.loads((tmp_path / "fake/virnet_sisr_x4_nl255.json").read_text())
    row = record["images"][0]
    assert row["lpips"] > 0 and row["lpips_bicubic"] > 0
    assert set(record["mean"]["Set5"]["mean"]) >= {"lpips", "lpips_bicubic"}
    table = (tmp_path / "fake/virnet_sisr_x4_nl255.md").read_text()
    assert table.count(" / ") >= 2 * 8 * 2 and "LPIPS (AlexNet" in table
    assert len(list((tmp_path / "fake/virnet_sisr_x4_nl255_images/Set5").glob("kernel*/one.png"))) == 7


def test_lpips_needs_its_alexnet_weights(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=_FakeLPIPS))
    monkeypatch.setattr(perceptual, "alexnet_weights_file", lambda: tmp_path / "checkpoints/alexnet.pth")
    score, why = perceptual.lpips_scorer(torch.device("cpu"))
    assert score is None and f"not in {tmp_path / 'checkpoints'}" in why


def test_syn_protocol_finds_the_test_sets_by_default(tmp_path, small_checkpoint, capsys, shared):
    assert demo_test_syn.build_parser().parse_args([]).data_root == "../shared/testsets"
    ckpt = small_checkpoint("denoising-syn", **SMALL)
    data = _dataset(tmp_path / "data", "CBSD68", shared, "CBSD68/101085.png", 48)  # no McMaster beside it
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "--protocol", "niid", "--data_root",
                               str(data), "-o", str(tmp_path / "out")]) == 0
    assert f"note: test set McMaster not in {data}, skipped (running CBSD68)" in capsys.readouterr().err
    assert json.loads((tmp_path / "out/virnet_denoising_niid.json").read_text())["datasets"] == ["CBSD68"]
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "--protocol", "niid", "--data_root",
                               str(tmp_path / "out"), "-o", str(tmp_path / "out2")]) == 1
    assert "none of the default test sets (CBSD68, McMaster) is in" in _error(capsys)
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "--protocol", "niid", "--datasets",
                               "McMaster", "-o", str(tmp_path / "out3")]) == 1
    assert f"test set 'McMaster' not found: no folder {shared.resolve() / 'testsets/McMaster'}" in _error(capsys)
