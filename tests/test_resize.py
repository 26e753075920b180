"""utils.resize.imresize against the reference fixtures, plus independent properties."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.resize import imresize

OPS = "conformance/ops"
TOL = 1e-5


# Number of cases per operator in ops.json (checked, so a changed manifest fails loudly).
N_CASES = {"resize_bicubic": 4, "kernel_blur": 4}


def _case(shared, op, index):
    cases = json.loads((shared / OPS / "ops.json").read_text())[op]
    assert len(cases) == N_CASES[op]
    return cases[index]


@pytest.mark.conformance
@pytest.mark.parametrize("index", range(N_CASES["resize_bicubic"]))
def test_numpy_matches_fixture(shared, index, margin):
    case = _case(shared, "resize_bicubic", index)
    data = np.load(shared / OPS / case["file"])
    out = imresize(data["x_hwc"], case["scale_factor"])
    assert out.dtype == data["x_hwc"].dtype
    assert out.shape == data["y_hwc"].shape
    margin("numpy", np.abs(out - data["y_hwc"]).max(), TOL)


@pytest.mark.conformance
@pytest.mark.parametrize("index", range(N_CASES["resize_bicubic"]))
def test_torch_matches_fixture(shared, index, margin, device):
    case = _case(shared, "resize_bicubic", index)
    data = np.load(shared / OPS / case["file"])
    x = torch.from_numpy(data["x_hwc"]).to(device).permute(2, 0, 1)[None]
    out = imresize(x, case["scale_factor"])
    assert out.dtype == torch.float32
    out = out[0].permute(1, 2, 0).cpu().numpy()
    assert out.shape == data["y_hwc"].shape
    margin("torch", np.abs(out - data["y_hwc"]).max(), TOL)


def _blur_reflect(im, kernels):
    """Per-sample cross-correlation of N x C x H x W by N x 1 x k x k, reflect padding."""
    n, c, h, w = im.shape
    pad = kernels.shape[-1] // 2
    padded = F.pad(im, (pad,) * 4, mode="reflect").reshape(1, n * c, h + 2 * pad, w + 2 * pad)
    out = F.conv2d(padded, kernels.repeat_interleave(c, dim=0), groups=n * c)
    return out.reshape(n, c, h, w)


@pytest.mark.conformance
@pytest.mark.parametrize("index", range(N_CASES["kernel_blur"]))
def test_bicubic_downsample_of_blurred_fixture(shared, index, margin, device):
    case = _case(shared, "kernel_blur", index)
    data = np.load(shared / OPS / case["file"])
    blurred = _blur_reflect(torch.from_numpy(data["im_hr"]).to(device), torch.from_numpy(data["kernel"]).to(device))
    # Sanity of the local blur: the 'direct' sub-sampling of the same blur is in the fixture.
    margin("lr_direct", np.abs(blurred[..., ::case["sf"], ::case["sf"]].cpu().numpy() - data["lr_direct"]).max(), TOL)
    expected = data["lr_bicubic"][0]  # the reference returns a spurious leading axis of 1
    out = imresize(blurred, 1 / case["sf"]).cpu().numpy()
    assert out.shape == expected.shape
    margin("lr_bicubic", np.abs(out - expected).max(), TOL)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 0.7, 1.0, 1.5, 2, 3])
def test_torch_and_numpy_agree(scale):
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 23, 18))
    out_torch = imresize(torch.from_numpy(x), scale).numpy()
    out_numpy = imresize(x.transpose(2, 3, 0, 1), scale).transpose(2, 3, 0, 1)
    assert out_torch.shape == (2, 3, math.ceil(scale * 23), math.ceil(scale * 18))
    assert np.abs(out_torch - out_numpy).max() < 1e-12


def test_output_size_and_dtypes():
    x64 = np.zeros((10, 7, 2))
    assert imresize(x64, 1 / 3).shape == (4, 3, 2)
    assert imresize(x64, 1 / 3).dtype == np.float64
    assert imresize(x64.astype(np.float32), 2).dtype == np.float32
    assert imresize(np.zeros((10, 7)), 1.5).shape == (15, 11)
    assert imresize(torch.zeros(1, 1, 10, 7, dtype=torch.float64), 0.5).dtype == torch.float64


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 0.6, 2.5])
def test_constant_image_stays_constant(scale):
    out = imresize(np.full((17, 12, 3), 0.37), scale)
    np.testing.assert_allclose(out, 0.37, rtol=0, atol=1e-12)


def test_unit_scale_is_identity():
    x = np.random.default_rng(1).random((9, 11, 3))
    np.testing.assert_allclose(imresize(x, 1.0), x, rtol=0, atol=1e-15)


def test_gradient():
    x = torch.rand(1, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    for scale in (1 / 3, 1.5):
        assert torch.autograd.gradcheck(lambda t: imresize(t, scale), (x,), fast_mode=True)
    # Down-scaling averages: a unit output gradient spreads to every input pixel and
    # its total equals the number of output pixels (weights of each output sum to one).
    out = imresize(x, 0.5)
    out.sum().backward()
    assert torch.all(x.grad.abs() > 0)
    assert x.grad.sum().item() == pytest.approx(out.numel())


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)), 0)
    with pytest.raises(TypeError):
        imresize(torch.zeros(1, 1, 4, 4, dtype=torch.int64), 0.5)
