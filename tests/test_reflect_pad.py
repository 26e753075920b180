"""``reflect_pad``: the SR loss's reflect padding, equal to ``F.pad(mode='reflect')`` in values and
gradients, with a backward free of the reflection-padding kernel (which raises on CUDA under
deterministic algorithms)."""
import pytest
import torch
import torch.nn.functional as F

from utils.degradation import blur_downsample, gaussian_window, noise_prior, reflect_pad


def _graph_ops(tensor: torch.Tensor) -> set:
    """The names of every backward node that ``tensor``'s gradient goes through."""
    seen, names, stack = set(), set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


@pytest.mark.parametrize("shape, pad", [((2, 3, 17, 23), 10), ((1, 1, 5, 4), 3), ((3, 6, 9), 1), ((2, 2, 8, 8), 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_equal_f_pad(shape, pad, dtype):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    ours = reflect_pad(x, pad)
    theirs = F.pad(x, (pad,) * 4, mode="reflect")
    assert torch.equal(ours, theirs)
    upstream = torch.randn_like(theirs)
    (grad_ours,) = torch.autograd.grad(ours, x, upstream)
    (grad_theirs,) = torch.autograd.grad(theirs, x, upstream)
    # up to four padded positions add into an input pixel: the order of those sums may differ
    assert torch.allclose(grad_ours, grad_theirs, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-13)


def test_no_reflection_kernel_in_backward():
    x = torch.rand(2, 3, 40, 36, requires_grad=True)
    assert any("Reflection" in name for name in _graph_ops(F.pad(x, (10,) * 4, mode="reflect")))
    names = _graph_ops(reflect_pad(x, 10))
    assert not any("Reflection" in name or "Scatter" in name or "IndexAdd" in name or "IndexPut" in name
                   for name in names), names
    kernel = torch.softmax(torch.randn(2, 441), 1).view(2, 1, 21, 21)
    assert not any("Reflection" in name for name in _graph_ops(blur_downsample(x, kernel, 4, "bicubic")))


def test_blur_downsample_under_deterministic_algorithms():
    """The SR loss's degradation runs forward and backward with deterministic algorithms on, and two
    backward passes give bit-equal gradients."""
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    kernel = torch.softmax(torch.randn(2, 441), 1).view(2, 1, 21, 21).requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = [torch.autograd.grad(blur_downsample(x, kernel, 4, "bicubic").square().sum(), (x, kernel))
                 for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_noise_prior_as_with_f_pad():
    noisy, clean = torch.rand(2, 3, 30, 30), torch.rand(2, 3, 30, 30)
    window = torch.from_numpy(gaussian_window(7)).float().expand(3, 1, 7, 7)
    expected = F.conv2d(F.pad((noisy - clean) ** 2, (3,) * 4, mode="reflect"), window, groups=3).clamp(min=1e-10)
    assert torch.equal(noise_prior(noisy, clean, 7), expected)


@pytest.mark.parametrize("pad", [-1, 8])
def test_too_large_pad_is_refused(pad):
    with pytest.raises(ValueError, match="reflect padding"):
        reflect_pad(torch.zeros(1, 1, 8, 12), pad)
