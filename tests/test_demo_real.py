"""demo_test_denoising_real.py on the CPU with a small random checkpoint and tiny SIDD / DND fixtures:
every mode's numbers against an independent computation (the model called directly, the flips written
out by hand, boxes cut from the MATLAB numbers, scikit-image metrics), the output files, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import demo_test_denoising_real as demo
import networks
from datasets.camera_noise import camera_noise_with_std
from real_fixtures import noisy_pairs, write_dnd, write_sidd_blocks
from utils.image_io import read_image, read_image_uint8, write_image
from utils.metrics import calculate_psnr
from one_line import one_line_error as _error
from helpers import demo_runner

SMALL = dict(n_feat=[8, 16], n_resblocks=1, dep_S=3)
BLOCKS = (2, 3, 24, 24, 3)
# DND boxes per image, MATLAB rows [r0, c0, r1, c1] (1-based, inclusive), some not square.
DND_BOXES = [np.array([[1, 1, 16, 16], [5, 9, 20, 30]]), np.array([[2, 3, 17, 18], [21, 1, 36, 12]])]
DND_SHAPES = [(40, 52), (36, 30)]



@pytest.fixture(scope="module")
def ckpt(small_checkpoint):
    """A small random denoising-real model (3-channel noise map) saved with its 'arch' entry."""
    return small_checkpoint("denoising-real", **SMALL)


@pytest.fixture(scope="module")
def net(ckpt):
    model = networks.build_model("denoising-real", **SMALL).eval()
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model_state_dict"])
    return model


@pytest.fixture(scope="module")
def sidd(tmp_path_factory):
    """SIDD validation blocks as MATLAB v5 and v7.3 files, and benchmark blocks (v5)."""
    root = tmp_path_factory.mktemp("sidd")
    blocks = noisy_pairs(BLOCKS, seed=4)
    write_sidd_blocks(root / "v5", *blocks)
    write_sidd_blocks(root / "v73", *blocks, v73=True)
    scipy.io.savemat(root / "v5" / "BenchmarkNoisyBlocksSrgb.mat", {"BenchmarkNoisyBlocksSrgb": blocks[0]})
    return root, blocks


_demo = demo_runner(demo.main)


# --------------------------------------------------------------------------- independent computation

def _forward(net, im):
    """The model on one H x W x 3 float32 image -> (mu, variance), H x W x C float64 arrays."""
    with torch.no_grad():
        mu, var = net(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None])
    return mu[0].double().numpy().transpose(1, 2, 0), var[0].double().numpy().transpose(1, 2, 0)


def _denoise(net, im, flip=False):
    """Clipped output in [0, 1]; with flip the mean of the raw outputs over 4 rotations x up-down flip."""
    if not flip:
        return np.clip(_forward(net, im)[0], 0, 1)
    total = np.zeros(im.shape)
    for turns in range(4):
        for upside_down in (False, True):
            view = np.rot90(im, turns)
            view = view[::-1] if upside_down else view
            out = _forward(net, view)[0]
            total += np.rot90(out[::-1] if upside_down else out, -turns)
    return np.clip(total / 8, 0, 1)


def _uint8(im):
    return np.rint(im * 255).astype(np.uint8)


def _sidd_expected(net, noisy, gt, flip):
    """Denoised uint8 blocks and per-block scikit-image PSNR / SSIM (RGB, border 0)."""
    denoised = np.zeros_like(noisy)
    psnr, ssim = [], []
    for i in range(noisy.shape[0]):
        for k in range(noisy.shape[1]):
            denoised[i, k] = _uint8(_denoise(net, noisy[i, k].astype(np.float32) / 255, flip))
            psnr.append(peak_signal_noise_ratio(gt[i, k], denoised[i, k], data_range=255))
            ssim.append(structural_similarity(denoised[i, k].astype(np.float64), gt[i, k].astype(np.float64),
                                              channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False))
    return denoised, np.array(psnr), np.array(ssim)


# --------------------------------------------------------------------------- SIDD

@pytest.mark.parametrize("flavour, flip", [("v5", False), ("v73", True)])
def test_sidd_val_matches_independent_computation(tmp_path, ckpt, net, sidd, capsys, flavour, flip):
    root, (noisy, gt) = sidd
    args = ["--sidd_val", root / flavour, "-o", tmp_path, "--save_mat"] + (["--flip"] if flip else [])
    assert _demo(ckpt, *args) == 0
    stem = f"sidd_val_{'flip' if flip else 'noflip'}"
    denoised, psnr, ssim = _sidd_expected(net, noisy, gt, flip)
    mat = scipy.io.loadmat(tmp_path / f"{stem}.mat")
    assert mat["denoised_res"].dtype == np.uint8 and mat["denoised_res"].shape == BLOCKS
    assert np.abs(mat["denoised_res"].astype(int) - denoised).max() <= 1  # float rounding of the flips
    assert mat["megatime"].item() > 0
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    assert result["blocks"] == 6 and result["flip"] is flip
    assert result["psnr"] == pytest.approx(psnr.mean(), abs=0.01)
    assert result["ssim"] == pytest.approx(ssim.mean(), abs=1e-3)
    rows = result["per_block"]
    assert [(r["image"], r["block"]) for r in rows] == [(i, k) for i in (1, 2) for k in (1, 2, 3)]
    np.testing.assert_allclose([r["psnr"] for r in rows], psnr, atol=0.01)
    csv_lines = (tmp_path / f"{stem}.csv").read_text().splitlines()
    assert csv_lines[0] == "image,block,psnr,ssim" and csv_lines[-1].startswith("mean,all,")
    table = (tmp_path / f"{stem}.md").read_text()
    assert f"| {result['psnr']:.2f} | {result['ssim']:.4f} |" in table and table in capsys.readouterr().out


def test_sidd_test_writes_the_submission(tmp_path, ckpt, net, sidd, capsys):
    root, (noisy, gt) = sidd
    assert _demo(ckpt, "--sidd_test", root / "v5", "-o", tmp_path, "--prefix", "run1") == 0
    assert f"upload {tmp_path / 'SubmitSrgb_run1.mat'}" in capsys.readouterr().out
    denoised = _sidd_expected(net, noisy, gt, flip=False)[0]
    reference = scipy.io.loadmat(tmp_path / "sidd_test_noflip_run1.mat")["denoised_res"]
    assert np.abs(reference.astype(int) - denoised).max() <= 1
    names = {name: cls for name, _, cls in scipy.io.whosmat(tmp_path / "SubmitSrgb_run1.mat")}
    assert names == {"DenoisedBlocksSrgb": "cell", "TimeMPSrgb": "double", "OptionalData": "struct"}
    mat = scipy.io.loadmat(tmp_path / "SubmitSrgb_run1.mat")
    cells = mat["DenoisedBlocksSrgb"]
    assert cells.shape == (2, 3)
    for i in range(2):
        for k in range(3):
            assert cells[i, k].dtype == np.uint8 and np.array_equal(cells[i, k], reference[i, k])
    assert mat["TimeMPSrgb"].item() > 0 and mat["OptionalData"]["MethodName"].item().item() == "VIRNet"


# --------------------------------------------------------------------------- DND

def test_dnd_protocol_crops_boxes_and_bundles(tmp_path, ckpt, net, capsys):
    images = write_dnd(tmp_path, DND_BOXES, DND_SHAPES)
    assert _demo(ckpt, "--dnd", tmp_path, "-o", tmp_path / "out") == 0
    out = tmp_path / "out" / "dnd_noflip"
    assert "4 boxes of 2 images denoised" in capsys.readouterr().out
    for i, (image, boxes) in enumerate(zip(images, DND_BOXES), start=1):
        bundle = scipy.io.loadmat(out / "bundled" / f"{i:04d}.mat")
        assert bundle["Idenoised"].shape == (1, 2) and bundle["israw"].item() == 0
        assert bundle["eval_version"].item() == "1.0"
        for k, (r0, c0, r1, c1) in enumerate(boxes, start=1):
            expected = _denoise(net, image[r0 - 1:r1, c0 - 1:c1])
            crop = scipy.io.loadmat(out / f"{i:04d}_{k:02d}.mat")["Idenoised_crop"]
            assert crop.dtype == np.float32 and crop.shape == (r1 - r0 + 1, c1 - c0 + 1, 3)
            np.testing.assert_allclose(crop, expected, atol=1e-5)
            np.testing.assert_array_equal(bundle["Idenoised"][0, k - 1], crop)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["boxes"], summary["flip"]) == (2, 4, False)


def test_dnd_bad_folders(tmp_path, ckpt, capsys):
    assert _demo(ckpt, "--dnd", tmp_path) == 1
    assert f"{tmp_path / 'info.mat'}: no such DND file" in _error(capsys)
    write_dnd(tmp_path, [DND_BOXES[0], DND_BOXES[1][:1]], DND_SHAPES)
    assert _demo(ckpt, "--dnd", tmp_path, "-o", tmp_path / "out") == 1
    assert "expected the same number of boxes for every image, got [2, 1]" in _error(capsys)
    missing = tmp_path / "missing"
    missing.mkdir()
    write_dnd(missing, DND_BOXES, DND_SHAPES[:1])  # boxes of two images, the file of the first only
    assert _demo(ckpt, "--dnd", missing, "-o", tmp_path / "out") == 1
    assert f"{missing / 'images_srgb' / '0002.mat'}: no such DND file" in _error(capsys)


# --------------------------------------------------------------------------- restoring photos

def test_restore_folder_writes_images_heat_maps_and_noise_levels(tmp_path, ckpt, net, capsys):
    src = tmp_path / "in"
    src.mkdir()
    noisy = noisy_pairs((2, 30, 38, 3), seed=5)[0]
    write_image(src / "a.png", noisy[0])
    write_image(src / "b.png", noisy[1])
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "out", "--prefix", "v", "--precision", "fp32") == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [".virnet_outputs.json",
                                                     "a_v.png", "a_v_noise_std.png", "b_v.png", "b_v_noise_std.png",
                                                     "noise_levels_v.csv", "noise_levels_v.json", "noise_levels_v.md"]
    heat = read_image_uint8(out / "a_v_noise_std.png")
    assert heat.shape[0] > 100 and heat.std() > 0  # a figure, not a copy of the image
    rows = json.loads((out / "noise_levels_v.json").read_text())
    for row, im in zip(rows, noisy):
        mu, var = _forward(net, im.astype(np.float32) / 255)
        restored = read_image_uint8(out / f"{row['image']}_v.png").astype(int)
        assert np.abs(restored - _uint8(np.clip(mu, 0, 1))).max() <= 1
        std = np.sqrt(var) * 255
        assert [row["std_r"], row["std_g"], row["std_b"]] == pytest.approx(std.mean(axis=(0, 1)), rel=1e-4)
    assert "| image | noise std R | noise std G | noise std B |" in capsys.readouterr().out
    assert _demo(ckpt, "-i", src / "a.png", "-o", tmp_path / "flip", "--flip") == 0
    assert read_image(tmp_path / "flip" / "a.png").shape == (30, 38, 3)


# --------------------------------------------------------------------------- embedded default


def test_no_mode_is_a_quick_look_at_camera_noise(tmp_path, ckpt, net, capsys):
    out = tmp_path / "out"
    assert _demo(ckpt, "-o", out, "--precision", "fp32") == 0  # compared with the fp32 forward below
    for name in ("coffee.png", "coffee_noise_std.png", "coffee_noisy.png", "coffee_compare.png", "quicklook.csv"):
        assert (out / name).is_file(), name
    clean = skimage.data.coffee()
    noisy, true_std = camera_noise_with_std(clean, np.random.default_rng(0))
    assert np.array_equal(read_image_uint8(out / "coffee_noisy.png"), _uint8(noisy))
    assert 2 < true_std.mean() < 60  # the synthesized noise is there, and the map measures it
    with torch.no_grad():
        mu, _ = net(torch.from_numpy(noisy.transpose(2, 0, 1))[None])
    restored = _uint8(np.clip(mu[0].numpy().transpose(1, 2, 0), 0, 1))
    assert np.abs(read_image_uint8(out / "coffee.png").astype(int) - restored).max() <= 1
    row = json.loads((out / "quicklook.json").read_text())[0]
    assert row["image"] == "coffee" and row["noise"] == "camera"
    assert row["psnr_noisy"] == pytest.approx(calculate_psnr(noisy, clean)) and row["psnr"] == pytest.approx(
        calculate_psnr(restored, clean))
    printed = capsys.readouterr()
    assert "| coffee | camera |" in printed.out and "synthesized camera noise" in printed.out


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, message", [
    (["-i", "x.png", "--dnd", "d"], "give at most one of -i IMAGE|FOLDER, --sidd_val DIR, --sidd_test DIR, --dnd DIR "
                                    "(got -i and --dnd)"),
    (["--dnd", "d", "--save_mat"], "--save_mat goes with --sidd_val"),
    (["--sidd_val", "{tmp}"], "{tmp}/ValidationNoisyBlocksSrgb.mat: no such SIDD block file"),
    (["--sidd_test", "{tmp}"], "{tmp}/BenchmarkNoisyBlocksSrgb.mat: no such SIDD block file"),
    (["-i", "{tmp}/missing.png"], "input not found: {tmp}/missing.png"),
])
def test_bad_input_gives_one_clear_line(tmp_path, ckpt, capsys, args, message):
    assert _demo(ckpt, *[a.format(tmp=tmp_path) for a in args]) == 1
    assert message.format(tmp=tmp_path) in _error(capsys)


def test_bad_sidd_files(tmp_path, ckpt, capsys):
    noisy, gt = noisy_pairs((1, 2, 10, 12, 3))
    write_sidd_blocks(tmp_path / "small", noisy, gt)
    assert _demo(ckpt, "--sidd_val", tmp_path / "small") == 1
    assert "blocks of 12 x 10 pixels are too small for SSIM (min 11 x 11)" in _error(capsys)
    write_sidd_blocks(tmp_path / "mismatch", *noisy_pairs((1, 2, 16, 16, 3)))
    scipy.io.savemat(tmp_path / "mismatch" / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": gt})
    assert _demo(ckpt, "--sidd_val", tmp_path / "mismatch") == 1
    assert "do not match the noisy blocks" in _error(capsys)
    (tmp_path / "mismatch" / "ValidationNoisyBlocksSrgb.mat").write_bytes(b"not a mat file")
    assert _demo(ckpt, "--sidd_val", tmp_path / "mismatch") == 1
    assert "not a readable MATLAB file" in _error(capsys)


def test_missing_default_checkpoint(tmp_path, monkeypatch, sidd, capsys):
    monkeypatch.setattr(demo, "DEFAULT_CKPT", tmp_path / "model_zoo/virnet_denoising_real.pth")
    assert demo.main(["--sidd_val", str(sidd[0] / "v5"), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 1
    assert "pass --ckpt_path FILE" in _error(capsys)


@pytest.mark.slow
def test_command_line_error_is_one_line(tmp_path, root):
    proc = subprocess.run([sys.executable, str(root / "demo_test_denoising_real.py"), "--dnd", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {tmp_path / 'info.mat'}: no such DND file\n"
