"""demo_test_sisr.py on the CPU with a small randomly initialised SR checkpoint: restore with the
kernel picture, the embedded default, the protocol against an independent computation, flags and
bad input."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import scipy.ndimage
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import demo_test_sisr
import networks
from utils.degradation import anisotropic_gaussian
from utils.image_io import read_image, read_image_uint8
from utils.inference import Restored
from utils.inference.pictures import kernel_from_kinfo, kinfo_caption
from utils.resize import imresize
from one_line import one_line_error as _error
from helpers import demo_runner, smooth_image as _image

SMALL = dict(n_feat=[8, 16], n_resblocks=1, dep_S=3, dep_K=1)
# (a1, a2, theta / pi) of the seven test kernels of the SR protocol, variances (a * sf)^2 (docs/reproduce.md)
TEST_KERNELS = [(0.4, 0.4, 0), (0.6, 0.6, 0), (0.8, 0.8, 0), (0.4, 0.2, 0), (0.6, 0.3, 0.75), (0.8, 0.4, 0.25),
                (0.8, 0.4, 0.5)]


@pytest.fixture(scope="module")
def ckpt(small_checkpoint):
    """A small random SR model saved with an 'arch' entry describing it."""
    return small_checkpoint("sisr", **SMALL)


_demo = demo_runner(demo_test_sisr.main)


# --------------------------------------------------------------------------- kernel picture


def test_kernel_picture_is_in_the_data_orientation():
    kernel, kinfo = anisotropic_gaussian(21, 4, 3.2 ** 2, 1.1 ** 2, 0.3 * np.pi)
    drawn = kernel_from_kinfo(kinfo, 21, 4)
    assert drawn.shape == (21, 21) and drawn.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(drawn, kernel, atol=1e-7)
    assert np.abs(drawn - kernel.T).max() > 1e-3  # anisotropic: the transpose would differ
    assert kinfo_caption(kinfo) == f"(var1, var2, rho) = ({kinfo[0]:.2f}, {kinfo[1]:.2f}, {kinfo[2]:+.2f})"


# --------------------------------------------------------------------------- restore


def test_restore_writes_sr_images_kernels_and_noise_level(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "a.png", 24, 30)
    _image(src / "b.jpg", 26, 22, seed=1)
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "out", "--sf", 3, "--prefix", "v") == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [".virnet_outputs.json",
                                                     "a_v.png", "a_v_kernel.png", "b_v.png", "b_v_kernel.png"]
    assert read_image(out / "a_v.png").shape == (72, 90, 3) and read_image(out / "b_v.png").shape == (78, 66, 3)
    picture = read_image_uint8(out / "a_v_kernel.png")
    assert picture.shape[0] > 200 and picture.std() > 0  # a figure, not a 21 x 21 copy
    printed = capsys.readouterr().out
    assert "a.png: estimated noise std " in printed and "(0-255), kernel (var1, var2, rho) = (" in printed
    assert "super-resolved 2 of 2 image(s) x3" in printed


def test_sr_tiling_matches_whole_image(tmp_path, ckpt, capsys):
    src = _image(tmp_path / "big.png", 70, 90)
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "tiled", "--sf", 2, "--tile", 32, "--tile_overlap", 16) == 0
    tiled_log = capsys.readouterr()
    assert "90 x 70, restored in 32 px tiles (overlap 16)" in tiled_log.err
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "whole", "--sf", 2, "--tile", 0) == 0
    whole_log = capsys.readouterr()
    tiled = read_image_uint8(tmp_path / "tiled/big.png").astype(int)
    whole = read_image_uint8(tmp_path / "whole/big.png").astype(int)
    assert tiled.shape == (140, 180, 3) and np.abs(tiled - whole).max() <= 1
    estimates = [line for line in tiled_log.out.splitlines() if "estimated" in line]
    assert estimates and estimates[0] in whole_log.out  # noise level and kernel from the whole image


def test_embedded_default_without_input(tmp_path, ckpt, capsys):
    assert _demo(ckpt, "-o", tmp_path / "out", "--sf", 2) == 0
    captured = capsys.readouterr()
    assert "scikit-image's 'astronaut' blurred by test kernel 6" in captured.err
    assert "astronaut x2: PSNR " in captured.out and "true noise std 2.55" in captured.out
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["astronaut_x2.png", "astronaut_x2_compare.png",
                                                     "astronaut_x2_kernel.png", "astronaut_x2_lr.png"]
    assert read_image(out / "astronaut_x2.png").shape == (512, 512, 3)
    assert read_image(out / "astronaut_x2_lr.png").shape == (256, 256, 3)
    assert read_image(out / "astronaut_x2_compare.png").shape[1] == 3 * 512 + 2 * 8
    kernels = read_image_uint8(out / "astronaut_x2_kernel.png")
    assert kernels.shape[1] > kernels.shape[0]  # two panels side by side


# --------------------------------------------------------------------------- protocol


def _kernel(var1, var2, theta, k=21):
    """Gaussian kernel with covariance R diag(var1, var2) R^T over (column, row) offsets."""
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([var1, var2]) @ rot.T)
    rows, cols = np.mgrid[0:k, 0:k] - k // 2
    offsets = np.stack([cols, rows], axis=-1).astype(np.float64)
    kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", offsets, inv, offsets))
    return kernel / kernel.sum()


def _luma(im):
    """MATLAB Y of a uint8 RGB image, rounded, as float64."""
    rgb = im.astype(np.float64)
    return np.round(16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255)


def _independent_protocol(ckpt, files, sf, level):
    """The protocol recomputed by hand: modcrop, scipy convolution with the kernel built here,
    clip, MATLAB bicubic down-sampling, default_rng(1234) noise; the model called directly;
    PSNR / SSIM on the rounded Y channel (border sf^2) by scikit-image."""
    net = networks.build_model("sisr", **SMALL).eval()
    net.load_state_dict(torch.load(ckpt, weights_only=True)["model_state_dict"])
    border = sf ** 2
    expected = {}
    for index, (a1, a2, theta) in enumerate(TEST_KERNELS, start=1):
        kernel = _kernel((a1 * sf) ** 2, (a2 * sf) ** 2, theta * np.pi)
        for f in files:
            gt = cv2.imread(str(f))[:, :, ::-1]
            gt = gt[:gt.shape[0] // sf * sf, :gt.shape[1] // sf * sf]
            blurred = np.clip(scipy.ndimage.convolve(gt / 255.0, kernel[:, :, None], mode="reflect"), 0, 1)
            lr = imresize(blurred, 1 / sf)
            lr = np.clip((lr + np.random.default_rng(1234).standard_normal(lr.shape) * level / 255)
                         .astype(np.float32), 0, 1)
            with torch.no_grad():
                mu, kinfo = net(torch.from_numpy(lr.transpose(2, 0, 1).copy())[None], sf)[:2]
            mu, kinfo = mu[0], kinfo[0].numpy()
            cos, sin = np.cos(theta * np.pi), np.sin(theta * np.pi)
            rot = np.array([[cos, -sin], [sin, cos]])
            cov = rot @ np.diag([(a1 * sf) ** 2, (a2 * sf) ** 2]) @ rot.T  # (columns, rows) as the data kernels
            truth = (cov[0, 0], cov[1, 1], cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))
            out = np.rint(mu.clamp(0, 1).numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
            bicubic = np.rint(np.clip(imresize(lr.astype(np.float64), sf), 0, 1) * 255).astype(np.uint8)
            y_gt = _luma(gt)[border:-border, border:-border]
            expected[str(index), f.stem] = [
                value for im in (out, bicubic) for y in [_luma(im)[border:-border, border:-border]]
                for value in (peak_signal_noise_ratio(y_gt, y, data_range=255),
                              structural_similarity(y, y_gt, data_range=255, gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False))]
            expected[str(index), f.stem] += [*kinfo, *np.abs(kinfo - truth)]
    return expected


@pytest.mark.slow
def test_protocol_matches_independent_computation(tmp_path, ckpt, shared, capsys):
    data = tmp_path / "data" / "Set5"
    data.mkdir(parents=True)
    for name in ("bird_GT.png", "butterfly_GT.png"):  # 288 and 256 pixels square: mod-crop to 3 cuts the latter
        shutil.copy(shared / "testsets/Set5" / name, data / name)
    files = sorted(data.iterdir(), key=str)
    assert _demo(ckpt, "--sf", 3, "--nlevel", 2.55, "--data_root", tmp_path / "data", "--datasets", "Set5",
                 "-o", tmp_path / "out") == 0
    expected = _independent_protocol(ckpt, files, 3, 2.55)
    result = json.loads((tmp_path / "out/virnet_sisr_x3_nl255.json").read_text())
    assert result["sf"] == 3 and result["noise_level"] == 2.55 and len(result["images"]) == 14
    metrics = ("psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic", "var1", "var2", "rho",
               "var1_error", "var2_error", "rho_error")
    for row in result["images"]:
        for metric, value in zip(metrics, expected[row["kernel"], row["image"]], strict=True):
            assert row[metric] == pytest.approx(value, abs=0.01 if "psnr" in metric else 1e-3), metric
    per_kernel = [np.mean([expected[str(k), f.stem][0] for f in files]) for k in range(1, 8)]
    assert result["mean"]["Set5"]["4"]["psnr_y"] == pytest.approx(per_kernel[3], abs=0.01)
    assert result["mean"]["Set5"]["mean"]["psnr_y"] == pytest.approx(np.mean(per_kernel), abs=0.01)
    table = (tmp_path / "out/virnet_sisr_x3_nl255.md").read_text()
    mean = result["mean"]["Set5"]["mean"]
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    assert lines[0] == ["dataset", "method"] + [f"kernel {k}" for k in range(1, 8)] + ["mean"]
    assert lines[2][:2] == ["Set5", "VIRNet"] and lines[2][-1] == f"{mean['psnr_y']:.2f} / {mean['ssim_y']:.4f}"
    assert lines[3][:2] == ["Set5", "bicubic"]
    assert lines[3][-1] == f"{mean['psnr_y_bicubic']:.2f} / {mean['ssim_y_bicubic']:.4f}"
    kernel_means = [np.mean([expected[str(k), f.stem][7:] for f in files], axis=0) for k in range(1, 8)]
    assert lines[4][:2] == ["Set5", "K-Net error var1 / var2 / rho"]
    assert [float(v) for v in lines[4][-1].split(" / ")] == pytest.approx(np.mean(kernel_means, axis=0), abs=2e-4)
    assert table in capsys.readouterr().out
    lines = (tmp_path / "out/virnet_sisr_x3_nl255.csv").read_text().splitlines()
    assert lines[0] == "dataset,kernel,image," + ",".join(metrics) and len(lines) == 1 + 14 + 8


def test_logged_noise_level_follows_the_snet_meaning():
    result = Restored(np.zeros((4, 4, 3), np.float32), np.full((1, 1, 1), 0.01, np.float32), np.ones(3), False)
    assert demo_test_sisr.noise_std_255(result, "std") == pytest.approx(2.55)  # the released weights
    assert demo_test_sisr.noise_std_255(result, "variance") == pytest.approx(25.5)


def test_noise_tags_follow_the_reference():
    assert [demo_test_sisr.noise_tag(v) for v in (0, 0.1, 2.55, 7.65)] == ["0", "01", "255", "765"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--sf", 5], "--sf must be 2, 3 or 4, got 5"),
    (["--noise_level", 300], "--noise_level must be in [0, 255], got 300"),
    (["--noise_level", 2.55, "-i", "x.png"], "--noise_level runs the protocol on --data_root/--datasets; drop -i"),
    (["--noise_level", 2.55, "--data_root", "/no/such/root"], "--data_root: folder not found: /no/such/root"),
    (["-i", "/no/such/image.png"], "input not found: /no/such/image.png"),
])
def test_bad_flags_give_one_line(tmp_path, ckpt, capsys, args, message):
    assert _demo(ckpt, "-o", tmp_path / "out", *args) == 1
    assert message in _error(capsys)


def test_missing_dataset_folder(tmp_path, ckpt, capsys):
    (tmp_path / "root").mkdir()
    assert _demo(ckpt, "--noise_level", 0.1, "--data_root", tmp_path / "root", "--datasets", "Set14",
                 "-o", tmp_path / "out") == 1
    assert "test set 'Set14' not found" in _error(capsys)


def test_image_smaller_than_the_kernel_is_refused(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "tiny.png", 20, 40)
    _image(src / "fine.png", 21, 21)
    assert _demo(ckpt, "-i", src, "-o", tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert "skipped tiny.png: image too small: 40 x 20 is smaller than the 21 x 21 blur kernel" in captured.err
    assert "super-resolved 1 of 2 image(s) x4, skipped 1" in captured.out
    assert _demo(ckpt, "-i", src / "tiny.png", "-o", tmp_path / "out") == 1  # nothing could be done


def test_wrong_task_checkpoints(tmp_path, capsys, released_checkpoint):
    torch.manual_seed(0)
    small = dict(n_feat=[8, 16], n_resblocks=1, dep_S=3)
    denoiser = networks.build_model("denoising-syn", **small).state_dict()
    torch.save({"model_state_dict": denoiser, "arch": {"task": "denoising-syn", "kwargs": small}}, tmp_path / "a.pth")
    assert _demo(tmp_path / "a.pth", "-o", tmp_path / "out") == 1
    assert "holds a 'denoising-syn' model; this demo needs 'sisr'" in _error(capsys)
    assert _demo(released_checkpoint("denoising-syn"), "-o", tmp_path / "out") == 1
    assert "these weights are a 'denoising-syn' model" in _error(capsys)


def test_missing_default_checkpoint(tmp_path, capsys, root):
    if (root / "model_zoo/virnet_sisr_x3.pth").exists():
        pytest.skip("the released x3 weights are installed")
    assert demo_test_sisr.main(["--sf", "3", "--device", "cpu", "-o", str(tmp_path / "out")]) == 1
    err = _error(capsys)
    assert "virnet_sisr_x3.pth not found; fetch the authors' weights with: python -m utils.download_weights sisr-x3" in err


def test_script_exits_without_traceback(root, tmp_path):
    proc = subprocess.run([sys.executable, str(root / "demo_test_sisr.py"), "--sf", "5", "-o", str(tmp_path)],
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr == "error: --sf must be 2, 3 or 4, got 5\n"
