"""One flag name for one thing across the three demos: --protocol in each (the old spellings
--noise_level alone and --sidd_val / --sidd_test / --dnd DIR kept), --flip for SR too (kernel
estimates turned back with the image), --ckpt_path defaults shown relative to the repository."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

import demo_test_denoising_real
import demo_test_sisr
import demo_test_syn
from utils.augment import MODES, augment_tensor, inverse_augment_kinfo, inverse_augment_tensor
from utils.degradation import kinfo_to_kernel
from utils.inference import Restorer, load_model_file
from one_line import one_line_error as _error

SMALL_SR = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=1)


@pytest.mark.parametrize("mode", MODES)
def test_kinfo_turns_back_as_the_kernel_picture_does(mode):
    kinfo = torch.tensor([[6.0, 2.0, 0.5], [3.0, 9.0, -0.3]], dtype=torch.float64)
    kernels = kinfo_to_kernel(kinfo, 21, 4, grid="xy")  # centred (no shift): turning it keeps the centre
    turned = augment_tensor(kernels, mode)              # the kernel of the augmented image
    # the estimate on the augmented image is the turned kernel's parameters; turning them back gives
    # the parameters of the kernel itself (moments of the drawn kernels: exact up to rounding)
    torch.testing.assert_close(inverse_augment_kinfo(_params_of(turned), mode), _params_of(kernels),
                               atol=1e-12, rtol=1e-12)
    if mode in (2, 3, 6, 7):  # a quarter turn (with or without a flip) changes an anisotropic kernel's kinfo
        assert not torch.allclose(_params_of(turned), _params_of(kernels))


def _params_of(kernels):
    """(var along columns, var along rows, rho) of centred k x k Gaussian kernels (their moments)."""
    k = kernels.shape[-1]
    axis = torch.arange(k, dtype=kernels.dtype) - (k - 1) / 2
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    w = kernels[:, 0]
    var_c, var_r = (w * cols ** 2).sum((1, 2)), (w * rows ** 2).sum((1, 2))
    cross = (w * cols * rows).sum((1, 2))
    return torch.stack([var_c, var_r, cross / (var_c.sqrt() * var_r.sqrt())], dim=1)


@pytest.fixture(scope="module")
def sr_ckpt(small_checkpoint):
    return small_checkpoint("sisr", **SMALL_SR)


def test_sr_flip_is_the_mean_over_the_eight_modes(sr_ckpt):
    net = load_model_file(sr_ckpt, sf=4)
    im = np.random.default_rng(0).random((24, 20, 3), dtype=np.float32)
    got = Restorer(net, sf=4, tile=0, flip=True)(im)
    x = torch.from_numpy(im.transpose(2, 0, 1))[None]
    with torch.inference_mode():
        outs = [net(augment_tensor(x, m), 4) for m in MODES]  # mu, kinfo, sigma
    mu = torch.stack([inverse_augment_tensor(o[0], m) for o, m in zip(outs, MODES)]).mean(0)
    kinfo = torch.stack([inverse_augment_kinfo(o[1], m) for o, m in zip(outs, MODES)]).mean(0)
    np.testing.assert_allclose(got.image, mu[0].clamp(0, 1).permute(1, 2, 0).numpy(), atol=1e-6)
    np.testing.assert_allclose(got.kinfo, kinfo[0].numpy(), rtol=1e-5, atol=1e-6)
    assert got.image.shape == (96, 80, 3)


def _sr(ckpt, *args):
    return demo_test_sisr.main(["--ckpt_path", str(ckpt), "--device", "cpu", *map(str, args)])


@pytest.mark.slow
def test_sr_protocol_flag_and_its_old_spelling(tmp_path, sr_ckpt, shared):
    data = tmp_path / "data" / "Set5"
    data.mkdir(parents=True)
    cv2.imwrite(str(data / "bird.png"), cv2.imread(str(shared / "testsets/Set5/bird_GT.png"))[:96, :96])
    assert _sr(sr_ckpt, "--protocol", "--data_root", data.parent, "--datasets", "Set5", "-o", tmp_path / "a") == 0
    assert _sr(sr_ckpt, "--noise_level", 2.55, "--data_root", data.parent, "--datasets", "Set5",
               "-o", tmp_path / "b") == 0
    new, old = (json.loads((tmp_path / d / "virnet_sisr_x4_nl255.json").read_text()) for d in "ab")
    assert new["noise_level"] == old["noise_level"] == 2.55 and new["flip"] is False
    assert new["mean"] == old["mean"]
    assert _sr(sr_ckpt, "--protocol", "--flip", "--data_root", data.parent, "--datasets", "Set5",
               "-o", tmp_path / "a") == 0
    flipped = json.loads((tmp_path / "a/virnet_sisr_x4_nl255_flip.json").read_text())
    assert flipped["flip"] is True and flipped["mean"] != new["mean"]


def test_sr_protocol_refuses_an_input_image(tmp_path, sr_ckpt, capsys):
    assert _sr(sr_ckpt, "--protocol", "-i", "x.png", "-o", tmp_path) == 1
    assert "--protocol runs the protocol on --data_root/--datasets; drop -i" in _error(capsys)


def _real(*args):
    return demo_test_denoising_real.main(["--device", "cpu", *map(str, args)])


def test_real_protocol_flag_is_the_mode_flag(tmp_path, capsys):
    assert _real("--protocol", "sidd_val", "--data_root", tmp_path, "-o", tmp_path / "out") == 1
    new = _error(capsys)
    assert _real("--sidd_val", tmp_path, "-o", tmp_path / "out") == 1
    assert new == _error(capsys) and "ValidationNoisyBlocksSrgb.mat: no such SIDD block file" in new
    assert _real("--protocol", "dnd", "-o", tmp_path / "out") == 1
    assert "data/DND" in _error(capsys)  # the default --data_root of DND


@pytest.mark.parametrize("args, message", [
    (["--data_root", "d"], "--data_root goes with --protocol sidd_val|sidd_test|dnd"),
    (["--protocol", "dnd", "--dnd", "d"], "give --protocol dnd or --dnd DIR, not both"),
    (["--protocol", "sidd_val", "-i", "x.png"], "give at most one of -i IMAGE|FOLDER, --sidd_val DIR"),
])
def test_real_protocol_bad_combinations_give_one_line(tmp_path, capsys, args, message):
    assert _real("-o", tmp_path, *args) == 1
    assert message in _error(capsys)


@pytest.mark.parametrize("demo", [demo_test_syn, demo_test_sisr, demo_test_denoising_real])
def test_ckpt_path_default_is_shown_relative_to_the_repository(demo):
    text = " ".join(demo.build_parser().format_help().split())
    assert "(default: model_zoo/" in text or "(default: x4 model_zoo/" in text
    assert "/work" not in text.split("--ckpt_path")[-1].split("--prefix")[0]


def test_load_model_file_builds_each_shipped_architecture():
    for name, task, sf in (("virnet_denoising_syn_compact", "denoising-syn", None),
                           ("virnet_denoising_real_compact", "denoising-real", None),
                           ("virnet_sisr_x4_compact", "sisr", 4)):
        net = load_model_file(f"model_zoo/{name}.safetensors")
        assert net.arch["task"] == task and net.arch.get("sf") == sf and not net.training
