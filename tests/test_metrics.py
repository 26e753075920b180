"""utils.metrics against the reference fixtures, plus hand-computed sanity checks."""
import json
import math

import numpy as np
import pytest
import torch

from utils.metrics import (batch_psnr, batch_ssim, calculate_psnr, calculate_ssim, rgb2ycbcr,
                           to_uint8)

N_CASES = 3
KEYS = [f"{m}_b{b}_y{y}" for m in ("psnr", "ssim") for b in (0, 4) for y in (0, 1)]
TOL = {"psnr": 1e-6, "ssim": 1e-7}
METRIC = {"psnr": calculate_psnr, "ssim": calculate_ssim}


def _load(shared, index):
    cases = json.loads((shared / "conformance/ops/ops.json").read_text())["metrics"]
    assert len(cases) == N_CASES
    case = cases[index]
    return case["values"], np.load(shared / "conformance/ops" / case["file"])


@pytest.mark.conformance
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("index", range(N_CASES))
def test_matches_fixture(shared, index, key, margin):
    values, data = _load(shared, index)
    metric, border, y = key.split("_")
    got = METRIC[metric](data["im1"], data["im2"], border=int(border[1:]), ycbcr=y == "y1")
    assert float(data[key]) == values[key]
    margin(key, abs(got - values[key]), TOL[metric])


@pytest.mark.conformance
@pytest.mark.parametrize("index", range(N_CASES))
def test_batch_helpers_match_fixture(shared, index, margin, device):
    values, data = _load(shared, index)

    def batch(im):  # two copies, so the mean over the batch is exercised
        return torch.from_numpy(np.stack([im, im])).to(device).permute(0, 3, 1, 2).float() / 255

    x, y = batch(data["im1"]), batch(data["im2"])
    margin("batch psnr_b0_y0", abs(batch_psnr(x, y) - values["psnr_b0_y0"]), TOL["psnr"])
    margin("batch ssim_b0_y0", abs(batch_ssim(x, y) - values["ssim_b0_y0"]), TOL["ssim"])
    # Y computed in float then quantised gives the same uint8 Y as the uint8 route here.
    margin("batch psnr_b4_y1", abs(batch_psnr(x, y, border=4, ycbcr=True) - values["psnr_b4_y1"]), TOL["psnr"])
    margin("batch ssim_b4_y1", abs(batch_ssim(x, y, border=4, ycbcr=True) - values["ssim_b4_y1"]), TOL["ssim"])


def test_batch_mean_over_images():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((3, 3, 16, 14), dtype=np.float32))
    y = (x + 0.05 * torch.from_numpy(rng.standard_normal((3, 3, 16, 14), dtype=np.float32))).clamp(0, 1)
    singles = [calculate_psnr(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy()) for a, b in zip(x, y)]
    assert batch_psnr(x, y) == pytest.approx(np.mean(singles), abs=1e-12)
    assert len(set(singles)) == 3


def test_psnr_of_known_mse():
    im1 = np.full((8, 6, 3), 100, dtype=np.uint8)
    im2 = im1.copy()
    im2[..., 0] += 6  # MSE = 36 / 3 = 12
    assert calculate_psnr(im1, im2) == pytest.approx(20 * math.log10(255 / math.sqrt(12)), abs=1e-12)
    assert calculate_psnr(im1, im1) == math.inf


def test_border_crop_removes_edge_differences():
    im1 = np.zeros((20, 20), dtype=np.uint8)
    im2 = im1.copy()
    im2[:2, :] = 255
    im2[:, -2:] = 255
    assert calculate_psnr(im1, im2, border=2) == math.inf
    assert calculate_psnr(im1, im2, border=1) < 10


def test_ssim_sanity():
    rng = np.random.default_rng(4)
    im = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    assert calculate_ssim(im, im) == pytest.approx(1.0, abs=1e-12)
    assert calculate_ssim(im, 255 - im) < 0


def test_float_images_are_quantised_like_img_as_ubyte():
    skimage = pytest.importorskip("skimage")
    rng = np.random.default_rng(5)
    im1 = rng.random((16, 16, 3), dtype=np.float32)
    im2 = np.clip(im1 + 0.03 * rng.standard_normal(im1.shape, dtype=np.float32), 0, 1)
    np.testing.assert_array_equal(to_uint8(im2), skimage.img_as_ubyte(im2))
    u1, u2 = to_uint8(im1), to_uint8(im2)
    assert calculate_psnr(im1, im2, ycbcr=True) == calculate_psnr(u1, u2, ycbcr=True)
    assert calculate_ssim(im1, im2) == calculate_ssim(u1, u2)
    np.testing.assert_array_equal(to_uint8(np.array([-0.5, 0.5 / 255, 1.5 / 255, 2.0])), [0, 0, 2, 255])


def test_rgb2ycbcr_of_gray_pixels():
    # The Y coefficients sum to 219, so a gray level v maps to 16 + 219 v / 255.
    levels = np.arange(256, dtype=np.uint8)
    gray = np.repeat(levels[None, :, None], 3, axis=2)
    y = rgb2ycbcr(gray)
    assert y.dtype == np.uint8 and y.shape == (1, 256)
    np.testing.assert_array_equal(y[0], np.round(16 + 219 * levels.astype(np.float64) / 255))
    full = rgb2ycbcr(gray, only_y=False)
    np.testing.assert_array_equal(full[..., 0], y)
    np.testing.assert_array_equal(full[..., 1:], 128)


def test_shape_mismatch_raises():
    a, b = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 15, 3), np.uint8)
    for fn in (calculate_psnr, calculate_ssim):
        with pytest.raises(ValueError, match="same shape"):
            fn(a, b)
    with pytest.raises(ValueError):
        batch_psnr(torch.zeros(1, 3, 16, 16), torch.zeros(2, 3, 16, 16))
