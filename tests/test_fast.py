"""utils.inference.fast.optimize_for_inference: same outputs (to float rounding), same weights and keys."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import networks
from networks.attresunet import AttLayer
from utils.inference.fast import NNPACKConv2d, PointAttLayer, optimize_for_inference

NARROW = dict(n_feat=[8, 16], dep_S=3, n_resblocks=1)


def _classes(net: nn.Module) -> set:
    return {type(m) for m in net.modules()}


@pytest.mark.parametrize("task,kwargs,args", [
    ("denoising-syn", NARROW, ()),
    ("denoising-real", NARROW, ()),
    ("sisr", dict(NARROW, dep_K=1), (4,)),
    ("sisr", dict(NARROW, dep_K=1, noise_avg=False), (2,)),
])
def test_fast_matches_eager(task, kwargs, args):
    torch.manual_seed(0)
    net = networks.build_model(task, **kwargs).eval()
    x = torch.rand(1, 3, 20, 28)
    fast = optimize_for_inference(net, "cpu")
    assert list(fast.state_dict()) == list(net.state_dict())
    assert NNPACKConv2d not in _classes(net) and PointAttLayer not in _classes(net)
    if torch.backends.nnpack.is_available():
        assert NNPACKConv2d in _classes(fast)
    constant_maps = task == "sisr" and kwargs.get("noise_avg", True)
    assert (PointAttLayer in _classes(fast)) == constant_maps
    assert (AttLayer in _classes(fast)) == (task == "sisr" and not constant_maps)
    with torch.inference_mode():
        for got, want in zip(fast(x, *args), net(x, *args)):
            assert got.shape == want.shape
            assert (got - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("index", range(8))
def test_fast_matches_reference_conformance(shared, index):
    """The authors' outputs in ../shared/conformance (batches of 2, odd sizes), relative error."""
    folder = shared / "conformance/networks"
    case = json.loads((folder / "networks.json").read_text())["cases"][index]
    data = np.load(folder / case["file"])
    net = getattr(networks, case["constructor"])(**case["kwargs"])
    net.load_state_dict({k[len("state/"):]: torch.from_numpy(data[k]) for k in data.files
                         if k.startswith("state/")}, strict=True)
    with torch.inference_mode():
        out = optimize_for_inference(net, "cpu")(torch.from_numpy(data["input"]),
                                                 *case["forward_args"])
    names = ["out_mu", "out_kinfo", "out_sigma"] if len(out) == 3 else ["out_mu", "out_sigma"]
    for name, tensor in zip(names, out):
        want = data[name]
        assert np.abs(tensor.numpy() - want).max() / np.abs(want).max() < 1e-4, name


def test_nnpack_conv_falls_back_outside_float32_cpu():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.rand(1, 4, 9, 7)
    want = conv(x)
    conv.__class__ = NNPACKConv2d
    with torch.inference_mode():
        assert (conv(x) - want).abs().max().item() < 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(x).dtype == torch.bfloat16
        double = conv.double()
        assert double(x.double()).dtype == torch.float64
