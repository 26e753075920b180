"""Degradation operators against the reference fixtures (kernels, blur, down-sampling, SR test
degradation) and their documented orientation."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.degradation import (anisotropic_gaussian, blur_downsample, correlate_fft, degrade_sr,
                               kinfo_to_kernel, sr_test_kernels)


def _cases(shared, name):
    return json.loads((shared / "conformance/ops/ops.json").read_text())[name]


@pytest.mark.conformance
@pytest.mark.parametrize("index", range(4))
def test_kernel_blur_matches_reference(shared, index, margin, device):
    case = _cases(shared, "kernel_blur")[index]
    d = np.load(shared / "conformance/ops" / case["file"])
    kernel = kinfo_to_kernel(torch.from_numpy(d["kinfo"]).to(device), case["k_size"], case["sf"], case["shift"])
    margin("kernel", np.abs(kernel.cpu().numpy() - d["kernel"]).max(), 1e-5)
    im_hr = torch.from_numpy(d["im_hr"]).to(device)
    ref_kernel = torch.from_numpy(d["kernel"]).to(device)
    direct = blur_downsample(im_hr, ref_kernel, case["sf"], "direct")
    margin("lr_direct", np.abs(direct.cpu().numpy() - d["lr_direct"]).max(), 1e-5)
    bicubic = blur_downsample(im_hr, ref_kernel, case["sf"], "Bicubic")
    assert bicubic.shape == d["lr_bicubic"].shape[1:]          # the reference's 5-D slip dropped
    margin("lr_bicubic", np.abs(bicubic.cpu().numpy() - d["lr_bicubic"][0]).max(), 1e-5)


@pytest.mark.conformance
@pytest.mark.parametrize("index", range(3))
def test_sr_test_degradation_matches_reference(shared, index, margin):
    case = _cases(shared, "sr_test_degradation")[index]
    d = np.load(shared / "conformance/ops" / case["file"])
    kernels, kinfos = sr_test_kernels(case["sf"])
    assert kernels.shape == (7, 21, 21)
    margin("kernels", np.abs(kernels - d["kernels"]).max(), 1e-5)
    margin("kinfos", np.abs(kinfos - d["kinfos"]).max(), 1e-5)
    im_lr = degrade_sr(d["im_hr"] / 255.0, kernels[case["kernel_index"]], case["sf"], case["nlevel"],
                       seed=case["seed"], downsampler=case["downsampler"])
    assert im_lr.dtype == np.float32 and im_lr.shape == d["im_lr"].shape
    margin("im_lr", np.abs(im_lr - d["im_lr"]).max(), 1e-5)


def test_grids_differ_by_a_transpose():
    kernel_xy, kinfo = anisotropic_gaussian(21, 4, 6.0, 1.5, 0.3 * np.pi, shift=False)
    kinfo_t = torch.from_numpy(kinfo)[None]
    ij = kinfo_to_kernel(kinfo_t, 21, 4, grid="ij")[0, 0].numpy()
    xy = kinfo_to_kernel(kinfo_t, 21, 4, grid="xy")[0, 0].numpy()
    assert np.abs(xy - kernel_xy).max() < 1e-10
    assert np.abs(ij - kernel_xy.T).max() < 1e-10
    assert np.abs(ij - kernel_xy).max() > 1e-3


def test_kinfo_meaning_variance_along_columns_first():
    kernel, kinfo = anisotropic_gaussian(21, 4, 9.0, 1.0, 0.0)
    assert kinfo == pytest.approx([9.0, 1.0, 0.0])
    offsets = np.arange(21) - 10
    var_cols = (kernel.sum(axis=0) * offsets ** 2).sum()    # spread along x (columns)
    var_rows = (kernel.sum(axis=1) * offsets ** 2).sum()
    assert var_cols > 5 * var_rows


def test_blur_downsample_rejects_unknown_downsampler():
    with pytest.raises(ValueError, match="downsampler"):
        blur_downsample(torch.rand(1, 3, 8, 8), torch.ones(1, 1, 3, 3) / 9, 2, "nearest")


def test_identity_kernel_direct_is_subsampling():
    im = torch.rand(2, 3, 12, 10)
    delta = torch.zeros(2, 1, 5, 5)
    delta[:, :, 2, 2] = 1
    torch.testing.assert_close(blur_downsample(im, delta, 2, "direct"), im[..., ::2, ::2], rtol=0, atol=1e-6)


def _grouped_conv(im, kernel):
    n, c = im.shape[:2]
    out = F.conv2d(im.reshape(1, n * c, *im.shape[-2:]), kernel.repeat_interleave(c, dim=0), groups=n * c)
    return out.view(n, c, *out.shape[-2:])


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_fft_correlation_is_the_grouped_convolution(dtype, tol):
    """Values and both gradients, a non-square image and asymmetric per-sample kernels (a flipped or
    transposed correlation would differ by far more than rounding)."""
    gen = torch.Generator().manual_seed(0)
    im = torch.rand(2, 3, 31, 26, generator=gen, dtype=dtype, requires_grad=True)
    kernel = torch.rand(2, 1, 7, 7, generator=gen, dtype=dtype)
    kernel = (kernel / kernel.sum(dim=(-2, -1), keepdim=True)).requires_grad_()
    weights = torch.rand(2, 3, 25, 20, generator=gen, dtype=dtype)
    outs, grads = [], []
    for fn in (correlate_fft, _grouped_conv):
        out = fn(im, kernel)
        outs.append(out)
        grads.append(torch.autograd.grad((out * weights).sum(), (im, kernel)))
    assert outs[0].shape == (2, 3, 25, 20) and outs[0].dtype == dtype
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=tol)
    for fft_grad, conv_grad in zip(*grads):
        torch.testing.assert_close(fft_grad, conv_grad, rtol=0, atol=tol * conv_grad.abs().max().item())
    assert (outs[0] - _grouped_conv(im, kernel.flip(-1))).abs().max() > 1e-3
