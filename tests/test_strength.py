"""Strength control of the denoisers (utils/inference/noise_control.py): the restoration assumes K times
the estimated noise std map (--strength K) or a given one (--noise_map VALUE|FILE); the R-Net gets the
part at or below the estimate and a weighted total-variation step removes the excess. K = 1 is
bit-identical to no flag, the total variation of the output falls as K or the map grows on both
shipped denoisers, the map follows tiling and flips, bad values get one line."""
import cv2
import numpy as np
import pytest
import torch

import demo_test_denoising_real
import demo_test_syn
import networks
from datasets.camera_noise import synthesize_camera_noise
from datasets.denoising_syn import to_float
from utils.errors import UserError
from utils.image_io import read_image_uint8
from utils.inference import NoiseControl, Restorer, load_model
from utils.inference.noise_control import (NoiseConditioned, _divergence, _gradient, total_variation,
                                           tv_smooth)
from one_line import one_line_error as _error

SMALL = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2)
CPU = torch.device("cpu")
STRENGTHS = (0.25, 0.5, 0.75, 1.0, 2.0, 4.0)


@pytest.fixture(scope="module")
def ckpt(small_checkpoint):
    return small_checkpoint("denoising-syn", **SMALL)


@pytest.fixture(scope="module")
def net(ckpt):
    return load_model("denoising-syn", str(ckpt), ckpt, CPU)


def _noisy(h=40, w=52, seed=0, sigma=25):
    rng = np.random.default_rng(seed)
    clean = cv2.resize(rng.random((5, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return (clean + rng.standard_normal(clean.shape) * sigma / 255).astype(np.float32)


def _image(path, im):
    cv2.imwrite(str(path), np.rint(np.clip(im, 0, 1) * 255).astype(np.uint8)[:, :, ::-1])
    return path


def test_strength_one_is_bit_identical_to_no_flag(tmp_path, ckpt, net):
    src = _image(tmp_path / "n.png", _noisy())
    im = _noisy()
    plain, one = Restorer(net)(im), Restorer(net, noise=NoiseControl(1.0))(im)
    assert np.array_equal(plain.image, one.image) and np.array_equal(plain.noise_var, one.noise_var)
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o",
                               str(tmp_path / "a")]) == 0
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o",
                               str(tmp_path / "b"), "--strength", "1"]) == 0
    assert (tmp_path / "a/n.png").read_bytes() == (tmp_path / "b/n.png").read_bytes()


def test_wrapper_at_strength_one_computes_the_forward_exactly(net):
    x = torch.from_numpy(_noisy().transpose(2, 0, 1))[None]
    with torch.inference_mode():
        mu, sigma = net(x)
        mu1, sigma1, keep, excess = NoiseConditioned(net, 1.0)(x)
    assert torch.equal(mu, mu1) and torch.equal(sigma, sigma1) and not keep.any() and not excess.any()


def _rof_objective(u, f, weight):
    """0.5 ||u - f||^2 and the weighted vectorial total variation of u."""
    return 0.5 * float((u - f).square().sum()), float((weight * _gradient(u).square().sum(dim=(1, 2)).sqrt()).sum())


def test_tv_step_is_the_weighted_rof_minimiser():
    gen = torch.Generator().manual_seed(0)
    f = torch.rand((1, 3, 24, 20), generator=gen, dtype=torch.float64)
    p = torch.randn((1, 2, 3, 24, 20), generator=gen, dtype=torch.float64)
    p[:, 0, ..., -1], p[:, 1, ..., -1, :] = 0, 0  # the entries no difference reaches
    assert abs(float((_gradient(f) * p).sum() + (f * _divergence(p)).sum())) < 1e-12  # -div is grad's adjoint
    weight = torch.rand((1, 1, 24, 20), generator=gen, dtype=torch.float64) * 0.2
    u = tv_smooth(f, weight, iterations=400)
    best = sum(_rof_objective(u, f, weight))
    for _ in range(20):
        assert best <= sum(_rof_objective(u + 1e-3 * torch.randn(u.shape, generator=gen, dtype=u.dtype), f, weight))
    assert best < sum(_rof_objective(f, f, weight))
    assert torch.equal(tv_smooth(f, torch.zeros_like(weight)), f)
    weighted_tv = [_rof_objective(tv_smooth(f, c * weight), f, weight)[1] for c in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(weighted_tv, weighted_tv[1:])), weighted_tv


def _crop(shared, name, h=96, w=128):
    return read_image_uint8(shared / "testsets/CBSD68" / name)[:h, :w]


def _shipped(task):
    path = networks.default_weights(task)
    return load_model(task, str(path), path, CPU)


def _tv_over(net, noisy, controls):
    return [total_variation(Restorer(net, noise=control)(noisy).image) for control in controls]


def _gaussian_25(clean):
    """i.i.d. Gaussian noise of std 25 (0-255 units), seed 0."""
    rng = np.random.default_rng(0)
    return to_float(clean) + rng.standard_normal(clean.shape).astype(np.float32) * np.float32(25 / 255)


def _camera_noise(clean):
    """Synthesized camera noise, seed 3."""
    return synthesize_camera_noise(to_float(clean), np.random.default_rng(3))[0]


@pytest.mark.parametrize("task, image, add_noise, maps", [
    ("denoising-syn", "102061.png", _gaussian_25, (5, 12, 25, 50, 100)),
    ("denoising-real", "101085.png", _camera_noise, (2, 5, 12, 25, 50))])
def test_total_variation_falls_with_strength_on_each_shipped_denoiser(shared, task, image, add_noise, maps):
    """The shipped denoiser on a CBSD68 crop with the noise it is made for: the total variation of the
    output strictly falls over K = 0.25 .. 4 and over given constant maps."""
    noisy = add_noise(_crop(shared, image))
    net = _shipped(task)
    tv = _tv_over(net, noisy, [NoiseControl(k) for k in STRENGTHS])
    assert all(a > b for a, b in zip(tv, tv[1:])), tv
    tv = _tv_over(net, noisy, [NoiseControl(1.0, float(v), str(v)) for v in maps])
    assert all(a > b for a, b in zip(tv, tv[1:])), tv


def test_the_heat_map_shows_the_map_used(net):
    im = _noisy()
    estimated = Restorer(net)(im).noise_var
    halved = Restorer(net, noise=NoiseControl(0.5))(im)
    assert np.allclose(halved.noise_var, estimated * 0.25, rtol=1e-6)
    given = Restorer(net, noise=NoiseControl(2.0, 10.0, "10"))(im)
    assert np.allclose(given.noise_std_255, 20.0, rtol=1e-5)
    assert Restorer(net, noise=NoiseControl(2.0, 10.0, "10")).noise_label == "given noise std (10) x 2"
    assert Restorer(net, noise=NoiseControl(0.5)).noise_label == "estimated noise std x 0.5"


def test_a_given_map_follows_tiles_and_flips(net):
    im = _noisy(h=141, w=167, seed=2)
    ramp = np.tile(np.linspace(5, 60, 167, dtype=np.float32), (141, 1))
    control = NoiseControl(1.0, ramp, "ramp.png")
    whole = Restorer(net, tile=0, noise=control)(im)
    tiled = Restorer(net, tile=64, overlap=32, noise=control)(im)
    assert tiled.tiled and np.abs(tiled.image - whole.image).max() < 1 / 255
    assert np.allclose(whole.noise_std_255[..., 0], ramp, rtol=1e-5)
    flipped = Restorer(net, tile=0, flip=True, noise=control)(im)
    assert np.allclose(flipped.noise_std_255[..., 0], ramp, rtol=1e-5)


def test_noise_map_file_in_the_demos(tmp_path, ckpt, small_checkpoint, capsys):
    src = _image(tmp_path / "n.png", _noisy())
    cv2.imwrite(str(tmp_path / "map.png"), np.full((40, 52), 30, np.uint8))
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o",
                               str(tmp_path / "out"), "--noise_map", str(tmp_path / "map.png")]) == 0
    real = small_checkpoint("denoising-real", n_feat=[8, 16], n_resblocks=1, dep_S=3)
    assert demo_test_denoising_real.main(["--ckpt_path", str(real), "--device", "cpu", "-i", str(src), "-o",
                                          str(tmp_path / "real"), "--noise_map", "30", "--strength", "0.5"]) == 0
    levels = (tmp_path / "real/noise_levels.csv").read_text().splitlines()[1].split(",")
    assert [round(float(v), 3) for v in levels[1:]] == [15.0, 15.0, 15.0]


@pytest.mark.parametrize("args, message", [
    (["--strength", "0"], "--strength must be in [0.25, 4] (beyond it the output is the noisy input or a flat "
                          "cartoon; docs/strength.md), got 0"),
    (["--strength", "nan"], "--strength must be in [0.25, 4]"),
    (["--strength", "1e9"], "--strength must be in [0.25, 4]"),
    (["--strength", "-2"], "--strength must be in [0.25, 4]"),
    (["--noise_map", "300"], "--noise_map: a constant noise std must be in [0, 255], got 300"),
    (["--noise_map", "-1"], "--noise_map: a constant noise std must be in [0, 255], got -1"),
    (["--noise_map", "nan"], "--noise_map: a constant noise std must be in [0, 255], got nan"),
    (["--noise_map", "100", "--strength", "3"], "--noise_map 100 with --strength 3 assumes a noise std of 300, "
                                                "above 255"),
    (["--noise_map", "nope"], "--noise_map: nope is neither a number (0-255) nor an image file"),
    (["--noise_map", "{tmp}/colour.png"], "{tmp}/colour.png: a colour image; give a grayscale image of noise stds"),
])
def test_bad_strength_or_map_is_one_line(tmp_path, ckpt, capsys, args, message):
    colour = np.zeros((40, 52, 3), np.uint8)
    colour[..., 2] = 40
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    src = _image(tmp_path / "n.png", _noisy())
    argv = ["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o", str(tmp_path / "out")]
    assert demo_test_syn.main(argv + [a.format(tmp=tmp_path) for a in args]) == 1
    assert message.format(tmp=tmp_path) in _error(capsys)


def test_map_of_another_size_skips_the_image_with_one_line(tmp_path, ckpt, capsys):
    src = _image(tmp_path / "n.png", _noisy())
    cv2.imwrite(str(tmp_path / "small.png"), np.full((20, 26), 30, np.uint8))
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o",
                               str(tmp_path / "out"), "--noise_map", str(tmp_path / "small.png")]) == 1
    err = capsys.readouterr().err
    assert f"skipped n.png: --noise_map {tmp_path / 'small.png'} is 26 x 20, the image 52 x 40" in err


def test_strength_needs_a_denoiser_and_works_without_noise_conditioning():
    torch.manual_seed(0)
    sr = networks.build_model("sisr", n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=1).eval()
    with pytest.raises(UserError, match="apply to the denoisers only"):
        NoiseControl(0.5).wrap(sr)
    blind = networks.build_model("denoising-syn", noise_cond=False, extra_mode="Null", **SMALL).eval()
    im = _noisy()
    out = {k: Restorer(blind, noise=NoiseControl(k))(im).image for k in (0.25, 1.0, 2.0)}
    assert total_variation(out[2.0]) < total_variation(out[1.0]) and not np.array_equal(out[0.25], out[1.0])


def test_below_half_the_estimate_the_input_is_blended_back(net):
    """K < 1/2: the output is y - 2K (y - x_half), x_half the output at K = 1/2 and y the input."""
    x = torch.from_numpy(_noisy().transpose(2, 0, 1))[None]
    with torch.inference_mode():
        mu = NoiseConditioned(net, 0.5)(x)[0]
        wrapped = NoiseConditioned(net, 0.25)
        out = NoiseControl(0.25).finish(dict(zip(wrapped.OUTPUTS, wrapped(x))), x)
    assert set(out) == {"mu", "sigma"} and torch.allclose(out["mu"], x - 0.5 * (x - mu), atol=1e-6)
