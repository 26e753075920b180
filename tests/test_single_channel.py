"""The operators take a single-channel H x W image as the reference's NumPy/OpenCV helpers do:
the result on H x W equals channel 0 of the result on the same image stacked to three channels
(to float64 rounding: BLAS sums a contiguous plane and a strided channel in different orders)."""
import numpy as np
import pytest
import torch

from utils.degradation import blur_downsample, blur_downsample_np, degrade_sr, noise_prior, sr_test_kernels
from utils.metrics import batch_psnr, batch_ssim, calculate_psnr, calculate_ssim, rgb2ycbcr
from utils.resize import imresize


@pytest.fixture(scope="module")
def gray():
    """A 45 x 38 grayscale image in [0, 1] with structure at every scale."""
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:45, 0:38]
    smooth = 0.5 + 0.3 * np.sin(rows / 5.0) * np.cos(cols / 7.0)
    return np.clip(smooth + 0.1 * rng.standard_normal(smooth.shape), 0, 1)


def stacked(im):
    return np.repeat(im[..., None], 3, axis=2)


def assert_same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 1.5])
def test_imresize_numpy(gray, scale):
    out = imresize(gray, scale)
    assert out.shape == imresize(stacked(gray), scale).shape[:2] and out.dtype == gray.dtype
    assert_same(out, imresize(stacked(gray), scale)[..., 0])


def test_imresize_torch_one_channel(gray):
    x = torch.from_numpy(gray)[None, None]
    out = imresize(x, 1 / 3)
    assert out.shape == (1, 1, 15, 13)
    assert_same(out.numpy(), imresize(x.expand(1, 3, -1, -1), 1 / 3)[:, :1].numpy())


@pytest.mark.parametrize("sf, downsampler", [(2, "direct"), (3, "bicubic"), (4, "bicubic")])
def test_blur_downsample_np(gray, sf, downsampler):
    kernel = sr_test_kernels(sf)[0][5]
    out = blur_downsample_np(gray, kernel, sf, downsampler)
    full = blur_downsample_np(stacked(gray), kernel, sf, downsampler)
    assert out.shape == full.shape[:2]
    assert_same(out, full[..., 0])


@pytest.mark.parametrize("sf", [2, 4])
def test_sr_test_degradation(gray, sf):
    kernel = sr_test_kernels(sf)[0][6]
    out = degrade_sr(gray, kernel, sf, nlevel=2.55, seed=1234)
    full = degrade_sr(stacked(gray), kernel, sf, nlevel=2.55, seed=1234)
    assert out.shape == full.shape[:2] and out.dtype == np.float32
    np.testing.assert_array_equal(out, full[..., 0])
    assert not np.array_equal(out, blur_downsample_np(gray, kernel, sf).astype(np.float32))  # noise added


def test_torch_blur_downsample_and_noise_prior_one_channel(gray):
    x = torch.from_numpy(gray).float()[None, None]
    kernel = torch.from_numpy(sr_test_kernels(3)[0][4]).float()[None, None]
    torch.testing.assert_close(blur_downsample(x, kernel, 3),
                               blur_downsample(x.expand(1, 3, -1, -1), kernel, 3)[:, :1], rtol=0, atol=0)
    noisy = x + 0.05
    torch.testing.assert_close(noise_prior(noisy, x, 7),
                               noise_prior(noisy.expand(1, 3, -1, -1), x.expand(1, 3, -1, -1), 7)[:, :1],
                               rtol=0, atol=0)


@pytest.mark.parametrize("metric", [calculate_psnr, calculate_ssim])
@pytest.mark.parametrize("border, ycbcr", [(0, False), (4, False), (0, True), (4, True)])
def test_metrics(gray, metric, border, ycbcr):
    other = np.clip(gray + 0.03 * np.random.default_rng(0).standard_normal(gray.shape), 0, 1)
    value = metric(gray, other, border=border, ycbcr=ycbcr)
    assert value == pytest.approx(metric(stacked(gray), stacked(other), border=border, ycbcr=ycbcr), rel=1e-12)
    if not ycbcr:  # the Y of a gray image is a rescaled copy of it: a different number
        assert value != metric(gray, other, border=border, ycbcr=True)


def test_rgb2ycbcr_gray(gray):
    u8 = np.round(gray * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb2ycbcr(u8), rgb2ycbcr(stacked(u8)))
    np.testing.assert_array_equal(rgb2ycbcr(gray), rgb2ycbcr(stacked(gray)))
    assert rgb2ycbcr(u8, only_y=False).shape == (45, 38, 3)


@pytest.mark.parametrize("metric", [batch_psnr, batch_ssim])
def test_batch_metrics_one_channel(gray, metric):
    x = torch.from_numpy(gray).float()[None, None]
    y = (x + 0.02).clamp(0, 1)
    for ycbcr in (False, True):
        assert metric(x, y, border=2, ycbcr=ycbcr) == pytest.approx(
            metric(x.expand(1, 3, -1, -1), y.expand(1, 3, -1, -1), border=2, ycbcr=ycbcr), rel=1e-12)
