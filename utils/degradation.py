"""Degradation operators: noise prior, Gaussian blur kernels, blur + down-sampling.

Two kernel constructions coexist, as in the reference:
- `cov_to_kernel` / `kinfo_to_kernel` (torch, differentiable) put the **row** offset first
  ('ij' grid). The SR loss uses them to rebuild the kernel from the K-Net's kinfo.
- `anisotropic_gaussian` (NumPy) builds the data kernels on an 'xy' grid (column offset first),
  so kinfo = (variance along columns, variance along rows, correlation).
For anisotropic kernels the two differ by a transpose (docs/faithfulness.md); `kinfo_to_kernel(...,
grid='xy')` gives the kernel in the data's orientation.
"""
import math
from typing import Tuple

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from .resize import imresize

DOWNSAMPLERS = ("direct", "bicubic")

# (a1, a2, theta / pi) of the seven SR test kernels; variances are (a * sf)^2 (docs/reproduce.md).
SR_TEST_KERNELS = ((0.4, 0.4, 0.0), (0.6, 0.6, 0.0), (0.8, 0.8, 0.0), (0.4, 0.2, 0.0),
                   (0.6, 0.3, 0.75), (0.8, 0.4, 0.25), (0.8, 0.4, 0.5))
KINFO_NAMES = ("var1", "var2", "rho")
"""The K-Net's kernel estimate, kinfo: variance along columns, along rows (HR pixels^2), correlation."""


def gaussian_window(k_size: int) -> np.ndarray:
    """Normalised k x k Gaussian window with OpenCV's default sigma 0.3((k-1)/2 - 1) + 0.8."""
    sigma = 0.3 * ((k_size - 1) * 0.5 - 1) + 0.8
    x = np.arange(k_size, dtype=np.float64) - (k_size - 1) / 2
    taps = np.exp(-x ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    window = np.outer(taps, taps)
    return window / window.sum()


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad,) * 4, mode='reflect')`` built from flipped slices joined by ``torch.cat``.

    x: ... x H x W with pad < H and pad < W; returns ... x (H + 2 pad) x (W + 2 pad), the same
    values (mirror about the edge pixel, which is not repeated). Its backward is a sum of slices
    (the gradients of slicing, flipping and concatenation), deterministic by construction: CUDA's
    reflection-padding backward accumulates with atomic adds and raises under
    ``torch.use_deterministic_algorithms(True)``, so the SR loss pads with this instead.
    Raises ValueError when ``pad`` is not smaller than both sides.
    """
    if pad == 0:
        return x
    if not 0 < pad < min(x.shape[-2:]):
        raise ValueError(f"reflect padding {pad} needs both sides larger than it, got {tuple(x.shape[-2:])}")
    x = torch.cat([x[..., 1:pad + 1, :].flip(-2), x, x[..., -pad - 1:-1, :].flip(-2)], dim=-2)
    return torch.cat([x[..., 1:pad + 1].flip(-1), x, x[..., -pad - 1:-1].flip(-1)], dim=-1)


def noise_prior(im_noisy: torch.Tensor, im_gt: torch.Tensor, var_window: int) -> torch.Tensor:
    """Windowed estimate of the noise variance: (im_noisy - im_gt)^2 filtered per channel by a
    `var_window` Gaussian window with reflect padding (``reflect_pad``), clamped at 1e-10.

    im_noisy, im_gt: N x C x H x W; returns N x C x H x W.
    """
    chn = im_noisy.shape[1]
    window = torch.from_numpy(gaussian_window(var_window)).to(im_noisy)
    window = window.expand(chn, 1, var_window, var_window)
    err2 = reflect_pad((im_noisy - im_gt) ** 2, var_window // 2)
    return F.conv2d(err2, window, groups=chn).clamp(min=1e-10)


def kernel_center(k_size: int, sf: int, shift: bool) -> float:
    """Centre of a k_size kernel, shifted by 0.5 (sf - k_size % 2) to align SR pixels if `shift`."""
    return k_size // 2 + (0.5 * (sf - k_size % 2) if shift else 0.0)


def kinfo_to_cov(kinfo: torch.Tensor) -> torch.Tensor:
    """kinfo N x 3 (var1, var2, rho) -> covariance N x 1 x 2 x 2 [[var1, c], [c, var2]],
    c = sqrt(var1) sqrt(var2) rho."""
    var1, var2, rho = kinfo[:, 0], kinfo[:, 1], kinfo[:, 2]
    cross = var1.sqrt() * var2.sqrt() * rho
    return torch.stack([var1, cross, cross, var2], dim=1).view(-1, 1, 2, 2)


def cov_to_kernel(cov: torch.Tensor, k_size: int = 21, sf: int = 3, shift: bool = False,
                  grid: str = "ij") -> torch.Tensor:
    """Gaussian kernels from covariances. cov N x 1 x 2 x 2 -> kernels N x 1 x k x k (sum 1).

    grid 'ij': the offset vector is (row, column) as in the reference's loss; 'xy': (column, row)
    as in the reference's data kernels.
    """
    center = kernel_center(k_size, sf, shift)
    axis = torch.arange(k_size, dtype=cov.dtype, device=cov.device) - center
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    first, second = (rows, cols) if grid == "ij" else (cols, rows)
    offsets = torch.stack([first, second], dim=-1).view(1, -1, 2, 1)   # 1 x k^2 x 2 x 1
    inv = torch.linalg.inv(cov)                                           # N x 1 x 2 x 2
    quad = (offsets.transpose(-1, -2) @ inv @ offsets).view(cov.shape[0], -1)
    return F.softmax(-0.5 * quad, dim=1).view(-1, 1, k_size, k_size)


def kinfo_to_kernel(kinfo: torch.Tensor, k_size: int = 21, sf: int = 3, shift: bool = False,
                    grid: str = "ij") -> torch.Tensor:
    """kinfo N x 3 (var1, var2, rho) -> kernels N x 1 x k x k; see `cov_to_kernel` for `grid`."""
    return cov_to_kernel(kinfo_to_cov(kinfo), k_size, sf, shift, grid)


def anisotropic_gaussian(k_size: int = 21, sf: int = 4, lambda_1: float = 1.2,
                         lambda_2: float = 5.0, theta: float = 0.0,
                         shift: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Anisotropic Gaussian kernel with covariance R(theta) diag(lambda_1, lambda_2) R(theta)^T on
    an 'xy' grid (column offset first).

    Returns (kernel k x k float64 summing to 1, kinfo (3,) = (Sigma_00, Sigma_11, rho)).
    """
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cov = rot @ np.diag([lambda_1, lambda_2]) @ rot.T
    inv = np.linalg.inv(cov)
    center = kernel_center(k_size, sf, shift)
    cols, rows = np.meshgrid(np.arange(k_size), np.arange(k_size))
    dx = (cols - center).astype(np.float32).astype(np.float64)
    dy = (rows - center).astype(np.float32).astype(np.float64)
    quad = inv[0, 0] * dx * dx + (inv[0, 1] + inv[1, 0]) * dx * dy + inv[1, 1] * dy * dy
    logits = -0.5 * quad
    kernel = np.exp(logits - logits.max())
    kernel /= kernel.sum()
    kinfo = np.array([cov[0, 0], cov[1, 1], cov[0, 1] / (math.sqrt(cov[0, 0]) * math.sqrt(cov[1, 1]))])
    return kernel, kinfo


def sr_test_kernels(sf: int, k_size: int = 21) -> Tuple[np.ndarray, np.ndarray]:
    """The seven test kernels of the SR protocol. Returns (kernels 7 x k x k, kinfos 7 x 3)."""
    pairs = [anisotropic_gaussian(k_size, sf, (a1 * sf) ** 2, (a2 * sf) ** 2, t * np.pi, False)
             for a1, a2, t in SR_TEST_KERNELS]
    return np.stack([k for k, _ in pairs]), np.stack([i for _, i in pairs])


def check_downsampler(downsampler: str) -> str:
    """Lower-cased 'direct' or 'bicubic' (case-insensitive input); ValueError otherwise."""
    name = downsampler.lower()
    if name not in DOWNSAMPLERS:
        raise ValueError(f"downsampler must be 'direct' or 'bicubic', got {downsampler!r}")
    return name


def correlate_fft(im: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """'Valid' cross-correlation of every channel of each sample with that sample's own kernel.

    im N x C x H x W; kernel N x 1 x k x k (k <= H, W). Returns N x C x (H - k + 1) x (W - k + 1),
    what ``F.conv2d`` gives with the kernels as a grouped convolution's weights, computed by FFT
    (the wrap-around of the H x W circular correlation falls outside the valid part). A per-sample
    21 x 21 kernel is the SR loss's blur; on the CPU oneDNN runs that grouped convolution and its
    backward about 8x slower than the FFT (measured: N = 8, C = 3, 148², fp32), whose result
    differs from the direct sum by rounding only (about 1e-6 for images in [0, 1]).
    """
    size = im.shape[-2:]
    k = kernel.shape[-1]
    spectrum = torch.fft.rfft2(im) * torch.fft.rfft2(kernel, s=size).conj()
    return torch.fft.irfft2(spectrum, s=size)[..., :size[0] - k + 1, :size[1] - k + 1]


def blur_downsample(im_hr: torch.Tensor, kernel: torch.Tensor, sf: int,
                    downsampler: str = "bicubic") -> torch.Tensor:
    """Blur each sample with its own kernel, then down-sample (the training degradation).

    im_hr N x C x H x W; kernel N x 1 x k x k. Reflect padding (k // 2, ``reflect_pad``: its
    backward is deterministic on CUDA too), cross-correlation, then
    'direct' (every sf-th pixel from the top-left) or 'bicubic' (antialiased MATLAB-style resize
    by 1/sf). Returns N x C x ceil(H/sf) x ceil(W/sf); differentiable in both inputs.
    """
    name = check_downsampler(downsampler)
    pad = kernel.shape[-1] // 2
    blurred = correlate_fft(reflect_pad(im_hr, pad), kernel)
    if name == "direct":
        return blurred[..., ::sf, ::sf]
    return imresize(blurred, 1 / sf)


def blur_downsample_np(im_hr: np.ndarray, kernel: np.ndarray, sf: int,
                       downsampler: str = "bicubic") -> np.ndarray:
    """The noise-free data degradation (NumPy), computed in im_hr's float dtype.

    im_hr H x W x C or H x W in [0, 1]; kernel k x k. True convolution per channel with scipy's
    'reflect' boundary (edge pixel repeated), clip to [0, 1], then 'direct' (every sf-th pixel
    from the top-left) or 'bicubic' (antialiased MATLAB-style resize by 1/sf).
    Returns ceil(H/sf) x ceil(W/sf) (x C), the layout of im_hr, in [0, 1].
    """
    name = check_downsampler(downsampler)
    weights = kernel if im_hr.ndim == 2 else kernel[..., None]
    blurred = np.clip(scipy.ndimage.convolve(im_hr, weights, mode="reflect"), 0.0, 1.0)
    if name == "direct":
        return np.ascontiguousarray(blurred[::sf, ::sf])
    return imresize(blurred, 1 / sf)


def degrade_sr(im_hr: np.ndarray, kernel: np.ndarray, sf: int, nlevel: float, seed: int = 1234,
               downsampler: str = "bicubic") -> np.ndarray:
    """The SR test degradation (NumPy).

    im_hr H x W x C or H x W float in [0, 1]; kernel k x k. True convolution with scipy's
    'reflect' boundary (edge pixel repeated), clip to [0, 1], down-sample by sf, add
    default_rng(seed).standard_normal * nlevel / 255 (nlevel on the 0-255 scale), clip.
    An H x W image is degraded as the RGB image with three equal channels (the reference reads
    grayscale files as RGB) and channel 0 is returned, so it gets the noise that image's first
    channel gets. Returns float32 ceil(H/sf) x ceil(W/sf) (x C) in [0, 1].
    """
    im_hr = np.asarray(im_hr, dtype=np.float64)
    if im_hr.ndim == 2:
        return degrade_sr(np.repeat(im_hr[..., None], 3, axis=2), kernel, sf, nlevel, seed, downsampler)[..., 0]
    im_lr = blur_downsample_np(im_hr, kernel, sf, downsampler)
    im_lr = im_lr + np.random.default_rng(seed).standard_normal(im_lr.shape) * (nlevel / 255.0)
    return np.clip(im_lr.astype(np.float32), 0.0, 1.0)
