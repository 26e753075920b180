"""Networks against the reference: conformance outputs, released architectures, checkpoints."""
import json

import numpy as np
import pytest
import torch

import networks
from networks import CheckpointError, build_model, load_checkpoint


def _cases(shared):
    return json.loads((shared / "conformance/networks/networks.json").read_text())["cases"]


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.conformance
@pytest.mark.parametrize("index", range(8))
def test_forward_matches_reference(shared, index, margin, device):
    cases = _cases(shared)
    assert len(cases) == 8
    case = cases[index]
    data = np.load(shared / "conformance/networks" / case["file"])
    net = getattr(networks, case["constructor"])(**case["kwargs"]).eval()
    state = {k[len("state/"):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("state/")}
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net.to(device)(torch.from_numpy(data["input"]).to(device), *case["forward_args"])
    names = ["out_mu", "out_kinfo", "out_sigma"] if len(out) == 3 else ["out_mu", "out_sigma"]
    for name, tensor in zip(names, out):
        assert tuple(tensor.shape) == data[name].shape, name
        margin(f"{name} (relative)", _rel_err(tensor.cpu().numpy(), data[name]), 1e-4)


@pytest.mark.conformance
@pytest.mark.parametrize("task", list(networks.TASKS))
def test_released_architecture(shared, task):
    official = json.loads((shared / "conformance/networks/official_architectures.json").read_text())[task]
    net = build_model(task)
    assert type(net).__name__ == official["constructor"]
    state = net.state_dict()
    assert [[k, list(v.shape)] for k, v in state.items()] == official["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == official["total_params"]
    for sub, count in official["params"].items():
        assert sum(p.numel() for p in getattr(net, sub).parameters()) == count


def test_dncnn_initialisation():
    net = networks.DnCNN(3, 1, dep=4, num_filters=16)
    gain = torch.nn.init.calculate_gain("leaky_relu", 0.25)
    for conv in (net.conv1, net.mid_layer[0], net.conv_last):
        w = conv.weight.detach().flatten(1)
        rows, cols = w.shape
        gram = w @ w.T if rows <= cols else w.T @ w
        assert torch.allclose(gram, gain ** 2 * torch.eye(gram.shape[0]), atol=1e-5)
        assert torch.count_nonzero(conv.bias) == 0


def _small(task):
    overrides = dict(n_feat=[8, 16], n_resblocks=1, dep_S=3)
    if task == "sisr":
        overrides["dep_K"] = 1
    return build_model(task, **overrides)


def test_load_checkpoint_module_prefix(tmp_path):
    torch.manual_seed(0)
    src = _small("denoising-syn")
    path = tmp_path / "ddp.pth"
    torch.save({"model_state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    dst = _small("denoising-syn")
    load_checkpoint(dst, path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    bare = tmp_path / "bare.pth"
    torch.save(src.state_dict(), bare)
    load_checkpoint(_small("denoising-syn"), bare)


def test_load_checkpoint_wrong_task_names_it(released_checkpoint):
    path = released_checkpoint("sisr")
    with torch.device("meta"):
        net = build_model("denoising-syn")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(net, path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and "'sisr'" in msg and "KNet" in msg


def test_load_checkpoint_shape_mismatch_and_corrupt(tmp_path):
    path = tmp_path / "narrow.pth"
    torch.save({"model_state_dict": _small("denoising-syn").state_dict()}, path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(build_model("denoising-syn", n_feat=[8, 24], n_resblocks=1, dep_S=3), path)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(_small("denoising-syn"), corrupt)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(_small("denoising-syn"), tmp_path / "missing.pth")


def test_sr_forward_shapes_any_size():
    net = _small("sisr").eval()
    with torch.no_grad():
        mu, kinfo, sigma = net(torch.rand(2, 3, 13, 11), 3)
    assert mu.shape == (2, 3, 39, 33) and kinfo.shape == (2, 3) and sigma.shape == (2, 1, 1, 1)
    assert bool((kinfo[:, :2] >= 1e-4).all()) and bool((kinfo[:, 2].abs() < 1).all())


def test_sr_super_resolve_takes_a_given_kernel():
    """super_resolve is forward's R-Net step: fed the estimates it gives forward's mu; another kernel
    changes the output (what bench/estimator_oracle.py relies on)."""
    net = _small("sisr").eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        mu, kinfo, sigma = net(x, 2)
        assert torch.equal(net.super_resolve(x, 2, kinfo.view(1, 3, 1, 1), sigma), mu)
        other = net.super_resolve(x, 2, torch.tensor([9.0, 1.0, 0.5]).view(1, 3, 1, 1), sigma)
    assert (other - mu).abs().max() > 1e-4


def test_export_carries_arch_and_rebuilds(tmp_path):
    from utils.training.state import export_model
    net = _small("denoising-syn")
    path = export_model(net, tmp_path / "m.pth")
    ckpt = networks.read_checkpoint(path)
    assert ckpt["arch"]["task"] == "denoising-syn"
    assert ckpt["arch"]["kwargs"]["n_feat"] == [8, 16]
    rebuilt = build_model(ckpt["arch"]["task"], **ckpt["arch"]["kwargs"])
    load_checkpoint(rebuilt, path)
