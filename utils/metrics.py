"""PSNR and MATLAB-style SSIM on 8-bit images, plus batch helpers for torch tensors.

All metric arithmetic is float64 on uint8 values (0-255). Float images in [0, 1] are first
quantised like ``skimage.img_as_ubyte`` (clip, x255, round half to even).
"""
import math

import numpy as np
import torch

from .image_io import to_uint8

# MATLAB rgb2ycbcr coefficients for inputs on the 0-255 scale (rows: R, G, B).
_YCBCR_MATRIX = np.array([[65.481, -37.797, 112.0],
                          [128.553, -74.203, -93.786],
                          [24.966, 112.0, -18.214]])
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])

_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2
_SSIM_RADIUS = 5  # 11 x 11 window


def _gaussian_window_1d(size: int = 2 * _SSIM_RADIUS + 1, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian (as cv2.getGaussianKernel); the SSIM window is its outer product."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    return g / g.sum()


_SSIM_WINDOW = _gaussian_window_1d()


def rgb2ycbcr(im: np.ndarray, only_y: bool = True) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` for an H x W x 3 RGB image (an H x W grayscale image is taken as
    RGB with three equal channels).

    Args:
        im: H x W x 3 or H x W, uint8 in [0, 255] or float in [0, 1].
        only_y: return only the luma channel (H x W) instead of H x W x 3 YCbCr.

    Returns:
        Same dtype as ``im``. uint8 inputs give values rounded to the nearest integer
        (Y in [16, 235]); float inputs give the unrounded result divided by 255.
    """
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    if im.ndim != 3 or im.shape[2] != 3:
        raise ValueError(f"rgb2ycbcr expects an H x W x 3 or H x W image, got shape {im.shape}")
    is_uint8 = im.dtype == np.uint8
    rgb = im.astype(np.float64) if is_uint8 else (im * 255).astype(np.float64)
    if only_y:
        out = np.dot(rgb, _YCBCR_MATRIX[:, 0] / 255.0) + _YCBCR_OFFSET[0]
    else:
        out = np.matmul(rgb, _YCBCR_MATRIX / 255.0) + _YCBCR_OFFSET
    out = out.round() if is_uint8 else out / 255.0
    return out.astype(im.dtype)


def _prepare_pair(im1, im2, border: int, ycbcr: bool):
    """Check shapes, quantise to uint8, optionally take Y, crop ``border``; return float64."""
    im1, im2 = np.asarray(im1), np.asarray(im2)
    if im1.shape != im2.shape:
        raise ValueError(f"images must have the same shape, got {im1.shape} and {im2.shape}")
    if im1.ndim not in (2, 3):
        raise ValueError(f"images must be H x W or H x W x C, got shape {im1.shape}")
    im1, im2 = to_uint8(im1), to_uint8(im2)
    if ycbcr:
        im1, im2 = rgb2ycbcr(im1), rgb2ycbcr(im2)
    h, w = im1.shape[:2]
    im1 = im1[border:h - border, border:w - border]
    im2 = im2[border:h - border, border:w - border]
    return im1.astype(np.float64), im2.astype(np.float64)


def calculate_psnr(im1, im2, border: int = 0, ycbcr: bool = False) -> float:
    """Peak signal-to-noise ratio in dB (peak 255).

    Args:
        im1, im2: H x W or H x W x C images of equal shape, uint8 in [0, 255] or float
            in [0, 1] (quantised to uint8 first).
        border: pixels cropped from each side before the comparison.
        ycbcr: compare only the MATLAB Y channel (C == 3; an H x W image counts as gray RGB),
            rounded to uint8.

    Returns:
        ``20 log10(255 / sqrt(MSE))`` over all pixels and channels; ``inf`` if identical.
    """
    im1, im2 = _prepare_pair(im1, im2, border, ycbcr)
    mse = np.mean((im1 - im2) ** 2)
    if mse == 0:
        return float("inf")
    return 20 * math.log10(255.0 / math.sqrt(mse))


def _filter_valid(im: np.ndarray) -> np.ndarray:
    """Separable 11 x 11 Gaussian filtering of an H x W float64 map, valid part only."""
    windows = np.lib.stride_tricks.sliding_window_view(im, _SSIM_WINDOW.size, axis=0)
    im = windows @ _SSIM_WINDOW
    windows = np.lib.stride_tricks.sliding_window_view(im, _SSIM_WINDOW.size, axis=1)
    return windows @ _SSIM_WINDOW


def _ssim_single(im1: np.ndarray, im2: np.ndarray) -> float:
    """Mean SSIM of two H x W float64 maps on the 0-255 scale (valid region)."""
    mu1, mu2 = _filter_valid(im1), _filter_valid(im2)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 ** 2, mu2 ** 2, mu1 * mu2
    sigma1_sq = _filter_valid(im1 ** 2) - mu1_sq
    sigma2_sq = _filter_valid(im2 ** 2) - mu2_sq
    sigma12 = _filter_valid(im1 * im2) - mu1_mu2
    numerator = (2 * mu1_mu2 + _SSIM_C1) * (2 * sigma12 + _SSIM_C2)
    denominator = (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2)
    return float(np.mean(numerator / denominator))


def calculate_ssim(im1, im2, border: int = 0, ycbcr: bool = False) -> float:
    """MATLAB-style structural similarity (Wang et al. 2004).

    Args:
        im1, im2: H x W or H x W x C images of equal shape, uint8 in [0, 255] or float
            in [0, 1] (quantised to uint8 first); after cropping both sides must be >= 11.
        border: pixels cropped from each side before the comparison.
        ycbcr: compare only the MATLAB Y channel (C == 3; an H x W image counts as gray RGB),
            rounded to uint8.

    Returns:
        SSIM in [-1, 1]: per channel, the mean of the SSIM map over the valid region of
        an 11 x 11 Gaussian window (sigma 1.5); then the mean over channels.
    """
    im1, im2 = _prepare_pair(im1, im2, border, ycbcr)
    if min(im1.shape[:2]) < _SSIM_WINDOW.size:
        raise ValueError(f"SSIM needs images of at least 11 x 11 pixels, got {im1.shape[:2]}")
    if im1.ndim == 2:
        return _ssim_single(im1, im2)
    return float(np.mean([_ssim_single(im1[..., c], im2[..., c]) for c in range(im1.shape[2])]))


def _rgb2y_torch(im: torch.Tensor) -> torch.Tensor:
    """MATLAB luma of an N x 3 x H x W RGB tensor in [0, 1] -> N x 1 x H x W in [0, 1]; a
    one-channel tensor is taken as gray RGB."""
    if im.shape[1] == 1:
        im = im.expand(-1, 3, -1, -1)
    if im.shape[1] != 3:
        raise ValueError(f"ycbcr=True needs RGB or one-channel tensors, got shape {tuple(im.shape)}")
    coeffs = torch.as_tensor(_YCBCR_MATRIX[:, 0], dtype=im.dtype, device=im.device).view(3, 1)
    y = torch.matmul(im.permute(0, 2, 3, 1) * 255.0, coeffs / 255.0) + float(_YCBCR_OFFSET[0])
    return (y / 255.0).clamp(0.0, 1.0).permute(0, 3, 1, 2)


def _batch_metric(metric, x: torch.Tensor, y: torch.Tensor, border: int, ycbcr: bool) -> float:
    """Mean of ``metric`` over a batch of N x C x H x W tensors in [0, 1]."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two N x C x H x W tensors of equal shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if ycbcr:
        x, y = _rgb2y_torch(x), _rgb2y_torch(y)
    x_u8 = to_uint8(x.detach().cpu().numpy().transpose(0, 2, 3, 1))
    y_u8 = to_uint8(y.detach().cpu().numpy().transpose(0, 2, 3, 1))
    return float(np.mean([metric(a, b, border=border) for a, b in zip(x_u8, y_u8)]))


def batch_psnr(x: torch.Tensor, y: torch.Tensor, border: int = 0, ycbcr: bool = False) -> float:
    """Mean PSNR (dB) over a batch.

    Args:
        x, y: N x C x H x W float tensors in [0, 1] (any device); quantised to uint8.
        border: pixels cropped from each side of every image.
        ycbcr: first convert the RGB tensors (C == 3, or C == 1 taken as gray RGB) to the
            MATLAB Y channel in float (clamped to [0, 1]), then quantise.

    Returns:
        The mean over the N images of :func:`calculate_psnr`.
    """
    return _batch_metric(calculate_psnr, x, y, border, ycbcr)


def batch_ssim(x: torch.Tensor, y: torch.Tensor, border: int = 0, ycbcr: bool = False) -> float:
    """Mean SSIM over a batch; arguments as :func:`batch_psnr`, per image :func:`calculate_ssim`."""
    return _batch_metric(calculate_ssim, x, y, border, ycbcr)
