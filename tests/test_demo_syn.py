"""demo_test_syn.py end to end on the CPU with a small randomly initialised checkpoint: the three
modes, the embedded default, the protocol's table against an independent computation, bad input."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import demo_test_syn
import networks
from utils.image_io import read_image, read_image_uint8
from one_line import one_line_error as _error
from helpers import demo_runner, smooth_image as _image

SMALL = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2)


@pytest.fixture(scope="module")
def ckpt(small_checkpoint):
    """A small random denoising-syn model saved with an 'arch' entry describing it."""
    return small_checkpoint("denoising-syn", **SMALL)


_demo = demo_runner(demo_test_syn.main)


def test_restore_folder_writes_images_and_heat_maps(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "a.png")
    _image(src / "b.jpg", h=25, w=31, seed=1)
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "out", "--prefix", "v") == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [".virnet_outputs.json",  # the record of the demo's own files
                                                     "a_v.png", "a_v_noise_std.png", "b_v.png", "b_v_noise_std.png"]
    assert read_image(out / "b_v.png").shape == (25, 31, 3)
    heat = read_image_uint8(out / "a_v_noise_std.png")
    assert heat.shape[0] > 100 and heat.std() > 0  # a figure, not a copy of the image
    assert "restored 2 of 2 image(s)" in capsys.readouterr().out


def test_large_image_is_tiled_and_matches_whole_image(tmp_path, ckpt, capsys):
    src = _image(tmp_path / "big.png", h=141, w=203)
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "tiled", "--tile", 96, "--tile_overlap", 32) == 0
    assert "203 x 141, restored in 96 px tiles (overlap 32)" in capsys.readouterr().err
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "whole", "--tile", 0) == 0
    tiled = read_image_uint8(tmp_path / "tiled/big.png").astype(int)
    whole = read_image_uint8(tmp_path / "whole/big.png").astype(int)
    assert np.abs(tiled - whole).max() <= 1


def test_fast_path_matches_plain_path(tmp_path, ckpt):
    src = _image(tmp_path / "x.png", h=41, w=53)
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "plain", "--precision", "fp32") == 0
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "fast", "--fast") == 0
    plain = read_image_uint8(tmp_path / "plain/x.png").astype(int)
    fast = read_image_uint8(tmp_path / "fast/x.png").astype(int)
    assert np.abs(plain - fast).max() <= 1     # float rounding can flip a uint8 rounding step


def test_quick_look_reports_metrics_and_panels(tmp_path, ckpt, capsys):
    clean = _image(tmp_path / "c.png", h=40, w=52)
    assert _demo(ckpt, "-i", clean, "-o", tmp_path / "out", "--add_noise", 25) == 0
    out = tmp_path / "out"
    assert read_image(out / "c_compare.png").shape[1] == 3 * 52 + 2 * 8
    row = json.loads((out / "quicklook.json").read_text())[0]
    gt = read_image_uint8(clean)
    restored = read_image_uint8(out / "c.png").astype(np.float64)
    mse = np.mean((restored - gt) ** 2)
    assert row["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-9)
    noisy = read_image_uint8(out / "c_noisy.png").astype(np.float64)
    assert row["psnr_noisy"] == pytest.approx(10 * np.log10(255 ** 2 / np.mean((noisy - gt) ** 2)), abs=1e-9)
    assert row["psnr_noisy"] == pytest.approx(20.2, abs=1.0)  # sigma 25 before clipping: 20.17 dB
    assert "| c     | sigma25 |" in capsys.readouterr().out
    assert (out / "quicklook.csv").read_text().startswith("image,noise,psnr_noisy,ssim_noisy,psnr,ssim\n")


def test_embedded_default_without_input(tmp_path, ckpt, capsys):
    assert _demo(ckpt, "-o", tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert "scikit-image's 'chelsea' sample" in captured.err
    assert f"results in {tmp_path / 'out'}" in captured.out
    for name in ("chelsea.png", "chelsea_noise_std.png", "chelsea_noisy.png", "chelsea_compare.png",
                 "quicklook.md"):
        assert (tmp_path / "out" / name).is_file()
    assert read_image(tmp_path / "out/chelsea.png").shape == (300, 451, 3)


def _independent_iid_protocol(ckpt, files):
    """The iid protocol recomputed by hand: one default_rng(1000), sigma 15/25/50, case by case,
    image by image; the model called directly; PSNR and SSIM by formula / scikit-image."""
    net = networks.build_model("denoising-syn", **SMALL).eval()
    net.load_state_dict(torch.load(ckpt, weights_only=True)["model_state_dict"])
    rng = np.random.default_rng(1000)
    gts = [cv2.imread(str(f))[:, :, ::-1] for f in files]
    expected = {}
    for sigma in (15, 25, 50):
        for f, gt in zip(files, gts):
            noisy = gt.astype(np.float32) / 255 + (rng.standard_normal(gt.shape) * (sigma / 255)).astype(np.float32)
            with torch.no_grad():
                mu = net(torch.from_numpy(noisy.transpose(2, 0, 1).copy())[None])[0][0]
            out = np.rint(mu.clamp(0, 1).numpy().transpose(1, 2, 0) * 255).astype(np.float64)
            baseline = np.rint(np.clip(noisy, 0, 1) * 255)
            expected[f"sigma{sigma}", f.stem] = [
                value for im in (out, baseline)
                for value in (10 * np.log10(255 ** 2 / np.mean((im - gt) ** 2)),
                              structural_similarity(im, gt.astype(np.float64), channel_axis=2, data_range=255,
                                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False))]
    return expected


@pytest.mark.slow
def test_protocol_table_matches_independent_computation(tmp_path, ckpt, shared, capsys):
    data = tmp_path / "data" / "CBSD68"
    data.mkdir(parents=True)
    files = sorted((shared / "testsets/CBSD68").glob("*.png"))[:2]
    for f in files:
        shutil.copy(f, data / f.name)
    files = sorted(data.iterdir(), key=str)
    assert _demo(ckpt, "--protocol", "iid", "--data_root", tmp_path / "data", "--datasets", "CBSD68",
                 "-o", tmp_path / "out") == 0
    expected = _independent_iid_protocol(ckpt, files)
    result = json.loads((tmp_path / "out/virnet_denoising_iid.json").read_text())
    assert len(result["images"]) == 6
    metrics = ("psnr", "ssim", "psnr_noisy", "ssim_noisy")
    for row in result["images"]:
        for metric, value in zip(metrics, expected[row["case"], row["image"]]):
            assert row[metric] == pytest.approx(value, abs=0.01 if "psnr" in metric else 1e-3), metric
    for case, sigma in (("sigma15", 15), ("sigma25", 25), ("sigma50", 50)):
        mean = result["mean"]["CBSD68"][case]
        assert mean["psnr"] == pytest.approx(np.mean([expected[case, f.stem][0] for f in files]), abs=0.01)
        assert mean["psnr_noisy"] == pytest.approx(np.mean([expected[case, f.stem][2] for f in files]), abs=0.01)
        assert 0 < mean["psnr_noisy"] - 20 * np.log10(255 / sigma) < 1.5  # clipping raises it a little
    table = (tmp_path / "out/virnet_denoising_iid.md").read_text()
    sigma25 = result["mean"]["CBSD68"]["sigma25"]
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line for line in table.splitlines()}
    assert f"{sigma25['psnr']:.2f} / {sigma25['ssim']:.4f}" in rows["CBSD68", "VIRNet"]
    assert f"{sigma25['psnr_noisy']:.2f} / {sigma25['ssim_noisy']:.4f}" in rows["CBSD68", "noisy input"]
    assert table in capsys.readouterr().out
    csv_lines = (tmp_path / "out/virnet_denoising_iid.csv").read_text().splitlines()
    assert csv_lines[0] == "dataset,case,image," + ",".join(metrics) and len(csv_lines) == 1 + 6 + 3


def test_protocol_with_flip_self_ensembles_and_names_its_results(tmp_path, ckpt, capsys):
    """--flip: each restoration is the mean of the model's outputs over the 8 flips / rotations,
    recomputed here by hand, and the results get their own name beside the plain run's."""
    data = tmp_path / "data" / "CBSD68"
    data.mkdir(parents=True)
    gt = read_image_uint8(_image(data / "a.png", h=32, w=40))
    for flip in ((), ("--flip",)):
        assert _demo(ckpt, "--protocol", "iid", "--data_root", tmp_path / "data", "--datasets", "CBSD68",
                     "-o", tmp_path / "out", *flip) == 0
    assert "iid protocol, self-ensemble, 3 restorations" in capsys.readouterr().out
    plain = json.loads((tmp_path / "out/virnet_denoising_iid.json").read_text())
    flipped = json.loads((tmp_path / "out/virnet_denoising_iid_flip.json").read_text())
    assert (plain["flip"], flipped["flip"]) == (False, True)
    net = networks.build_model("denoising-syn", **SMALL).eval()
    net.load_state_dict(torch.load(ckpt, weights_only=True)["model_state_dict"])
    rng = np.random.default_rng(1000)
    for sigma, row in zip((15, 25, 50), flipped["images"]):
        noisy = gt.astype(np.float32) / 255 + (rng.standard_normal(gt.shape) * (sigma / 255)).astype(np.float32)
        x = torch.from_numpy(noisy.transpose(2, 0, 1).copy())[None]
        outs = []
        with torch.no_grad():
            for k in range(4):
                for mirror in (False, True):
                    t = torch.rot90(x.flip(-1) if mirror else x, k, (-2, -1))
                    back = torch.rot90(net(t)[0], -k, (-2, -1))
                    outs.append(back.flip(-1) if mirror else back)
        mu = torch.stack(outs).mean(0)[0]
        out = np.rint(mu.clamp(0, 1).numpy().transpose(1, 2, 0) * 255)
        expected = 10 * np.log10(255 ** 2 / np.mean((out - gt) ** 2))
        assert row["case"] == f"sigma{sigma}" and row["psnr"] == pytest.approx(expected, abs=0.01)
        assert row["psnr_noisy"] == next(r["psnr_noisy"] for r in plain["images"] if r["case"] == row["case"])


# --------------------------------------------------------------------------- bad input

def test_missing_input_and_empty_folder(tmp_path, ckpt, capsys):
    assert _demo(ckpt, "-i", tmp_path / "nope.png", "-o", tmp_path / "out") == 1
    assert "input not found" in _error(capsys)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("no images here")
    assert _demo(ckpt, "-i", tmp_path / "empty", "-o", tmp_path / "out") == 1
    assert "no image files" in _error(capsys)


def test_folder_skips_corrupt_and_tiny_images(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "good.png")
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    _image(src / "tiny.png", h=1, w=1)
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert "skipped corrupt.png" in captured.err
    assert "skipped tiny.png: image too small: 1 x 1 (min 2 x 2)" in captured.err
    assert "restored 1 of 3 image(s), skipped 2" in captured.out
    assert (tmp_path / "out/good.png").is_file() and not (tmp_path / "out/tiny.png").exists()
    assert _demo(ckpt, "-i", src / "corrupt.png", "-o", tmp_path / "out") == 1  # nothing could be done


def test_gray_rgba_and_16_bit_inputs_come_out_as_they_went_in(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "gray.png", channels=1)
    _image(src / "rgba.png", channels=4)
    _image(src / "deep.png", dtype=np.uint16)
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "note: gray.png: grayscale, written as grayscale" in err
    assert "note: rgba.png: alpha channel kept" in err
    assert "note: deep.png: 16-bit, written as 16-bit" in err
    out = {stem: cv2.imread(str(tmp_path / f"out/{stem}.png"), cv2.IMREAD_UNCHANGED)
           for stem in ("gray", "rgba", "deep")}
    assert out["gray"].shape == (36, 44) and out["deep"].shape == (36, 44, 3) and out["deep"].dtype == np.uint16
    assert np.array_equal(out["rgba"][:, :, 3], cv2.imread(str(src / "rgba.png"), cv2.IMREAD_UNCHANGED)[:, :, 3])
    assert _demo(ckpt, "-i", src / "deep.png", "-o", tmp_path / "eight", "--bit_depth", "8") == 0
    assert cv2.imread(str(tmp_path / "eight/deep.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_wrong_task_checkpoints(tmp_path, capsys, released_checkpoint):
    torch.manual_seed(0)
    sr = networks.build_model("sisr", n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=2)
    torch.save({"model_state_dict": sr.state_dict(), "arch": {"task": "sisr", "kwargs": {}}}, tmp_path / "sr.pth")
    assert _demo(tmp_path / "sr.pth", "-o", tmp_path / "out") == 1
    assert "holds a 'sisr' model; this demo needs 'denoising-syn'" in _error(capsys)
    assert _demo(released_checkpoint("denoising-real"), "-o", tmp_path / "out") == 1
    assert "these weights are a 'denoising-real' model" in _error(capsys)


def test_missing_default_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_test_syn, "DEFAULT_CKPT", tmp_path / "model_zoo/virnet_denoising_syn.pth")
    assert demo_test_syn.main(["-o", str(tmp_path / "out"), "--device", "cpu"]) == 1
    err = _error(capsys)
    assert "no checkpoint at " in err and "virnet_denoising_syn.pth: pass --ckpt_path FILE" in err


def test_output_folder_not_writable(tmp_path, ckpt, capsys):
    (tmp_path / "file").write_text("x")
    assert _demo(ckpt, "-o", tmp_path / "file/out") == 1
    assert "cannot create output folder" in _error(capsys)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert _demo(ckpt, "-o", locked) == 1
        assert "is not writable" in _error(capsys)


def test_never_overwrites_inputs(tmp_path, ckpt, capsys):
    src = _image(tmp_path / "a.png")
    before = src.read_bytes()
    assert _demo(ckpt, "-i", src, "-o", tmp_path) == 1
    assert "would overwrite the input" in _error(capsys)
    assert src.read_bytes() == before
    assert _demo(ckpt, "-i", tmp_path, "-o", tmp_path, "--prefix", "restored") == 0
    assert src.read_bytes() == before and (tmp_path / "a_restored.png").is_file()


def test_protocol_bad_flags(tmp_path, ckpt, capsys):
    assert _demo(ckpt, "--protocol", "niid", "--data_root", tmp_path, "--datasets", "McMaster") == 1
    assert "test set 'McMaster' not found" in _error(capsys)
    assert _demo(ckpt, "--protocol", "niid", "-i", tmp_path) == 1
    assert "drop -i" in _error(capsys)


@pytest.mark.slow
def test_command_line_error_is_one_line(tmp_path, root):
    proc = subprocess.run([sys.executable, str(root / "demo_test_syn.py"), "-i", str(tmp_path / "missing.png")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == f"error: input not found: {tmp_path / 'missing.png'}\n"
