"""networks.widen and ``utils.export_weights --n_feat / --n_resblocks``: a trained model grows wider
R-Net levels and more blocks per level without changing its output, its new channels and blocks can
learn, and bad widths or block counts are refused in one line."""
import pytest
import torch

import networks
from utils.inference.export import main

CASES = [("denoising-syn", dict(n_feat=[16, 24], dep_S=3, n_resblocks=2), [24, 40], None),
         ("sisr", dict(n_feat=[16, 24], dep_S=3, dep_K=3, n_resblocks=1, extra_mode="Both"), [32, 40], 2)]


def _trained_like(task, overrides, sf):
    """A model of `task` whose every weight is random, biases too (no zero a test could lean on)."""
    torch.manual_seed(0)
    net = networks.build_model(task, **({"sf": sf} if sf else {}), **overrides)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net.eval()


def _outputs(net, x, sf):
    with torch.no_grad():
        return net(x, sf) if sf else net(x)


@pytest.mark.parametrize("task,overrides,wide_feat,sf", CASES)
def test_widened_model_computes_the_same(task, overrides, wide_feat, sf):
    net = _trained_like(task, overrides, sf)
    wide = networks.widen(net, wide_feat).eval()
    assert wide.arch["kwargs"]["n_feat"] == wide_feat and wide.arch.get("sf") == net.arch.get("sf")
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in net.parameters())
    assert wide.RNet.head.weight.shape[0] == wide_feat[0]
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    for old, new in zip(_outputs(net, x, sf), _outputs(wide, x, sf)):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("task,overrides,wide_feat,sf", CASES)
@pytest.mark.parametrize("widths", [False, True])
def test_deepened_model_computes_the_same(task, overrides, wide_feat, sf, widths):
    net = _trained_like(task, overrides, sf)
    blocks = overrides["n_resblocks"] + 1
    deep = networks.widen(net, wide_feat if widths else None, n_resblocks=blocks).eval()
    assert deep.arch["kwargs"]["n_resblocks"] == blocks
    assert deep.arch["kwargs"]["n_feat"] == (wide_feat if widths else overrides["n_feat"])
    assert all(len(level.body) == blocks for level in [*deep.RNet.down_path, *deep.RNet.up_path])
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    for old, new in zip(_outputs(net, x, sf), _outputs(deep, x, sf)):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-4)


def test_new_blocks_learn():
    task, overrides, _, sf = CASES[0]
    deep = networks.widen(_trained_like(task, overrides, sf), n_resblocks=overrides["n_resblocks"] + 1)
    added = deep.RNet.down_path[0].body[-1]
    assert added.conv2.weight.abs().sum() == 0 and added.conv1.weight.abs().sum() > 0
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    deep(x)[0].square().mean().backward()
    assert added.conv2.weight.grad.abs().sum() > 0, "the added block's zero convolution gets no gradient"


def test_new_channels_learn():
    task, overrides, wide_feat, sf = CASES[0]
    wide = networks.widen(_trained_like(task, overrides, sf), wide_feat)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    wide(x)[0].square().mean().backward()
    old_width = overrides["n_feat"][0]
    into_old_from_new = wide.RNet.tail.weight.grad[:, old_width:]
    assert into_old_from_new.abs().sum() > 0, "the zero weights reading the new channels get no gradient"


def test_narrowing_is_refused():
    task, overrides, _, sf = CASES[0]
    net = _trained_like(task, overrides, sf)
    for bad in ([8, 24], [16, 24, 32]):
        with pytest.raises(ValueError, match="each at least the trained model's"):
            networks.widen(net, bad)
    with pytest.raises(ValueError, match="n_resblocks 1 must be at least the trained model's 2"):
        networks.widen(net, n_resblocks=1)


def test_export_widens_for_init_weights(small_checkpoint, tmp_path, capsys):
    src = small_checkpoint("denoising-syn", n_feat=[16, 32], dep_S=3, n_resblocks=1)
    dst = tmp_path / "wide.pth"
    assert main([str(src), str(dst), "--n_feat", "24", "40"]) == 0
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["arch"]["kwargs"]["n_feat"] == [24, 40]
    wide = networks.build_model("denoising-syn", n_feat=[24, 40], dep_S=3, n_resblocks=1)
    networks.load_checkpoint(wide, dst)
    assert main([str(src), str(tmp_path / "narrow.pth"), "--n_feat", "8", "40"]) == 1
    err = capsys.readouterr().err
    assert "each at least the trained model's [16, 32]" in err and err.count("\n") == 1
    assert not (tmp_path / "narrow.pth").exists()


def test_export_deepens_for_init_weights(small_checkpoint, tmp_path, capsys):
    src = small_checkpoint("denoising-syn", n_feat=[16, 32], dep_S=3, n_resblocks=1)
    dst = tmp_path / "deep.pth"
    assert main([str(src), str(dst), "--n_resblocks", "2"]) == 0
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["arch"]["kwargs"]["n_resblocks"] == 2 and ckpt["arch"]["kwargs"]["n_feat"] == [16, 32]
    networks.load_checkpoint(networks.build_model("denoising-syn", n_feat=[16, 32], dep_S=3, n_resblocks=2), dst)
    assert main([str(src), str(tmp_path / "shallow.pth"), "--n_resblocks", "0"]) == 1
    err = capsys.readouterr().err
    assert "n_resblocks 0 must be at least the trained model's 1" in err and err.count("\n") == 1
    assert not (tmp_path / "shallow.pth").exists()


def test_export_widened_sr_keeps_its_scale(small_checkpoint, tmp_path):
    src = small_checkpoint("sisr", sf=4, n_feat=[16, 24], dep_S=3, dep_K=3, n_resblocks=1)
    dst = tmp_path / "wide_sr.pth"
    assert main([str(src), str(dst), "--n_feat", "24", "32"]) == 0
    arch = torch.load(dst, weights_only=True)["arch"]
    assert arch["sf"] == 4 and arch["kwargs"]["n_feat"] == [24, 32]
