"""Real-noise training: the step (MixUp, windowed variance prior, ELBO) against an independent
computation, SIDD validation from v5 and v7.3 block files, configs and command line of
train_denoising_real.py, and a short end-to-end run. Resume and DDP are the engine's (test_engine.py,
test_train_syn.py)."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from scipy.special import digamma
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from networks import build_model, load_checkpoint, read_checkpoint
from helpers import sub_env
from real_fixtures import noisy_pairs, write_sidd_blocks, write_sidd_patches
from train_denoising_real import DenoisingReal
from utils import training as engine
from utils.config import ConfigError, load_config

SMALL = "configs/denoising_real_small.json"
TINY = ["batch_size=4", "patch_size=24", "n_feat=[8,16]", "dep_S=3", "n_resblocks=1", "iters_per_epoch=4",
        "epochs=1", "save_freq=0", "print_freq=4", "image_freq=0", "val_images=0", "num_workers=0"]
BLOCKS = (2, 3, 24, 24, 3)



@pytest.fixture(scope="module")
def sidd(tmp_path_factory):
    """A SIDD-like tree: 8 prepared 40 x 40 patch pairs; validation blocks as v5 and as v7.3 files."""
    root = tmp_path_factory.mktemp("sidd")
    noisy_dir = write_sidd_patches(root / "patchs40", *noisy_pairs((8, 40, 40, 3), seed=1))
    blocks = noisy_pairs(BLOCKS, seed=2)
    write_sidd_blocks(root / "v5", *blocks)
    write_sidd_blocks(root / "v73", *blocks, v73=True)
    return {"train": noisy_dir, "v5": root / "v5", "v73": root / "v73", "blocks": blocks}


def data_opts(sidd, val="v5"):
    return [f"train_pch_dir={sidd['train']}", f"val_dir={sidd[val]}"]


def tiny_config(sidd, *extra, val="v5"):
    return load_config(SMALL, DenoisingReal.schema(), TINY + data_opts(sidd, val) + list(extra))


def ctx():
    return engine.StepContext(torch.device("cpu"), epoch=0, iteration=0)


# --------------------------------------------------------------------------- independent arithmetic


def windowed_prior(noisy, clean, window=7):
    """(noisy - clean)^2 per channel, reflect-padded, filtered by OpenCV's default-sigma Gaussian."""
    taps = cv2.getGaussianKernel(window, 0.3 * ((window - 1) / 2 - 1) + 0.8).ravel()  # sigma 1.4 for 7 taps
    kernel = np.outer(taps, taps)
    kernel /= kernel.sum()
    err2 = (noisy.double().numpy() - clean.double().numpy()) ** 2
    pad = window // 2
    err2 = np.pad(err2, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    out = np.zeros_like(err2[..., pad:-pad, pad:-pad])
    for r in range(window):
        for c in range(window):
            out += kernel[r, c] * err2[..., r:r + out.shape[-2], c:c + out.shape[-1]]
    return np.maximum(out, 1e-10)


def negative_elbo(mu, sigma, noisy, clean, prior, eps2=1e-6, window=7):
    """The denoising negative ELBO written out in float64: lh + kl_gauss + kl_invgamma."""
    mu, sigma, noisy, clean = (t.double().numpy() for t in (mu, sigma, noisy, clean))
    alpha0 = window ** 2 / 2
    alpha, beta, beta0 = alpha0 - 1, alpha0 * sigma, alpha0 * prior
    kl_gauss = 0.5 * np.mean((mu - clean) ** 2 / eps2)
    kl_ig = np.mean(alpha * (beta0 / beta - 1) + alpha * (np.log(beta) - np.log(beta0)))
    lh = np.mean(0.5 * (np.log(beta) - digamma(alpha) + alpha / beta * ((noisy - mu) ** 2 + eps2)))
    return lh + 0.5 * np.log(2 * np.pi) + kl_gauss + kl_ig


def metrics_uint8(restored, clean_u8):
    """Mean PSNR / SSIM (scikit-image) of N x 3 x H x W outputs in [0, 1] against uint8 HWC images."""
    outs = np.rint(restored.clamp(0, 1).double().numpy().transpose(0, 2, 3, 1) * 255)
    psnr = [peak_signal_noise_ratio(gt, out.astype(np.uint8), data_range=255) for out, gt in zip(outs, clean_u8)]
    ssim = [structural_similarity(out, gt.astype(np.float64), channel_axis=2, data_range=255, gaussian_weights=True,
                                  sigma=1.5, use_sample_covariance=False) for out, gt in zip(outs, clean_u8)]
    return np.mean(psnr), np.mean(ssim)


# --------------------------------------------------------------------------- training step


@pytest.mark.parametrize("use_mixup", [True, False])
def test_train_step_matches_independent_elbo(sidd, use_mixup):
    task = DenoisingReal(tiny_config(sidd, f"mixup={str(use_mixup).lower()}"))
    model = task.build_model()
    data = task.build_train_set(8)
    noisy, clean = (torch.stack(t) for t in zip(*(data[i] for i in range(4))))
    torch.manual_seed(5)
    out = task.train_step(model, (noisy, clean), ctx())
    if use_mixup:  # the reference's draws from the global RNG: randperm, then a Beta(0.6, 0.6) rsample
        torch.manual_seed(5)
        perm = torch.randperm(4)
        lam = torch.distributions.Beta(torch.tensor([0.6]), torch.tensor([0.6])).rsample((4, 1)).view(-1, 1, 1, 1)
        noisy, clean = lam * noisy + (1 - lam) * noisy[perm], lam * clean + (1 - lam) * clean[perm]
    prior = windowed_prior(noisy, clean)
    np.testing.assert_allclose(cv2.getGaussianKernel(7, 1.4).ravel(),  # the reference's 7-tap window
                               [0.0290, 0.1038, 0.2232, 0.2880, 0.2232, 0.1038, 0.0290], atol=1e-4)
    visuals = out.visuals()
    np.testing.assert_allclose(visuals["sigma_prior"].double().numpy(), prior, rtol=1e-4, atol=1e-9)
    assert torch.equal(visuals["noisy"], noisy) and torch.equal(visuals["clean"], clean)
    with torch.no_grad():
        mu, sigma = model(noisy)
    assert sigma.shape == (4, 3, 24, 24)  # one variance map per colour channel
    expected = negative_elbo(mu, sigma, noisy, clean, prior)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    parts = out.terms["lh"] + out.terms["kl_gauss"] + out.terms["kl_invgamma"]
    assert parts.item() == pytest.approx(out.loss.item(), rel=1e-6)


@pytest.mark.parametrize("flavour", ["v5", "v73"])
def test_validation_blocks_and_metrics(sidd, flavour):
    task = DenoisingReal(tiny_config(sidd, val=flavour))
    (val,) = task.build_val_sets()
    assert (val.name, val.batch_size, len(val.dataset)) == ("sidd", 4, 6)
    noisy_u8, clean_u8 = (b.reshape(-1, 24, 24, 3) for b in sidd["blocks"])
    noisy = torch.from_numpy(noisy_u8.transpose(0, 3, 1, 2) / 255).float()[:4]
    batch = tuple(torch.stack(t) for t in zip(*(val.dataset[i] for i in range(4))))
    np.testing.assert_allclose(batch[0].numpy(), noisy.numpy(), atol=1e-7)  # image-major block order
    model = task.build_model().eval()
    with torch.no_grad():
        out = task.val_step(model, batch, ctx())
        mu = model(batch[0])[0]
    psnr, ssim = metrics_uint8(mu, clean_u8[:4])
    assert out.metrics["psnr"] == pytest.approx(psnr, abs=1e-6)
    assert out.metrics["ssim"] == pytest.approx(ssim, abs=1e-3)
    task = DenoisingReal(tiny_config(sidd, "val_max_blocks=3", "val_batch_size=2", val=flavour))
    (val,) = task.build_val_sets()
    assert len(val.dataset) == 3 and val.batch_size == 2
    for n, block in enumerate((0, 2, 4)):  # every other block: both images are validated
        np.testing.assert_allclose(val.dataset[n][1].numpy(), clean_u8[block].transpose(2, 0, 1) / 255, atol=1e-7)


# --------------------------------------------------------------------------- configs and CLI


def test_shipped_configs_load(root, sidd):
    full = load_config(root / "configs" / "denoising_real.json", DenoisingReal.schema(), data_opts(sidd))
    assert (full.batch_size, full.patch_size, full.epochs, full.warmup_epochs, full.iters_per_epoch) == \
        (16, 128, 150, 10, 10000)
    assert (full.lr, full.lr_min, full.n_feat, full.dep_S, full.n_resblocks, full.sigma_chn) == \
        (1e-4, 1e-6, [96, 160, 224, 288], 8, 3, 3)
    assert (full.clip_grad_R, full.clip_grad_S, full.var_window, full.eps2, full.image_freq) == \
        (5e2, 1e2, 7, 1e-6, 3000)
    assert full.noise_cond is True and full.extra_mode == "Input" and full.mixup is True
    assert (full.val_batch_size, full.val_max_blocks) == (4, 0)
    assert load_config(root / SMALL, DenoisingReal.schema(), data_opts(sidd)).n_feat == [16, 32]
    if not (root / "data" / "SIDD").exists():  # SIDD is not shipped: the placeholder paths say so
        with pytest.raises(ConfigError, match="config key 'train_pch_dir': folder not found: data/SIDD/"):
            load_config(root / SMALL, DenoisingReal.schema())


def test_reference_style_config_is_accepted(tmp_path, sidd):
    text = ('{\n "batch_size": 16, "patch_size": 128, "epochs": 150, "warmup_epochs": 10, "lr": 1e-4,\n'
            ' "port": 1234,   # port for distributed training\n "noise_cond": "True", "extra_mode": "Input",\n'
            f' "train_pch_dir": "{sidd["train"]}",\n'
            f' "test_noisy_path": "{sidd["v73"] / "ValidationNoisyBlocksSrgb.mat"}",\n'
            f' "test_gt_path": "{sidd["v73"] / "ValidationGtBlocksSrgb.mat"}",\n'
            ' "clip_grad_R": 5e2, "clip_grad_S": 1e2, "var_window": 7, "eps2": 1e-6, "resume": ""\n}\n')
    (tmp_path / "ref.json").write_text(text)
    cfg = load_config(tmp_path / "ref.json", DenoisingReal.schema())
    assert cfg.noise_cond is True and cfg.lr_min == 1e-6 and cfg.image_freq == 3000 and cfg.val_dir is None
    (val,) = DenoisingReal(cfg).build_val_sets()
    assert len(val.dataset) == 6


@pytest.mark.parametrize("opts, message", [
    (["train_pch_dir=/no/such/noisy"], "config key 'train_pch_dir': folder not found: /no/such/noisy"),
    (["patch_size=48"], "config key 'patch_size': 48 is larger than the training patches (40 x 40, e.g. "),
    (["var_window=6"], "config key 'var_window': must be odd, got 6"),
    (["val_dir={empty}"], "validation blocks: {empty}/ValidationNoisyBlocksSrgb.mat: no such SIDD block file"),
    (["test_noisy_path={noisy_mat}"], "config keys 'test_noisy_path' and 'test_gt_path' go together"),
    (["val_dir=null"], "no validation data: set val_dir"),
    (["train_pch_dir={empty}"], "config key 'train_pch_dir': {parent}/gt: no such SIDD patch folder"),
    (["scale_range=[0.6,1]"], "config key 'scale_range': applies to train_source 'camera_synthetic' only"),
    (["plain_noise_fraction=0.5"], "config key 'plain_noise_fraction': applies to train_source 'camera_synthetic' only"),
    (["plain_noise_fraction=1.5"], "config key 'plain_noise_fraction': must be <= 1, got 1.5"),
])
def test_bad_input_gives_one_clear_line(tmp_path, capsys, sidd, opts, message):
    names = {"empty": tmp_path / "empty", "parent": tmp_path, "noisy_mat": sidd["v5"] / "ValidationNoisyBlocksSrgb.mat"}
    names["empty"].mkdir()
    argv = ["--config", SMALL, "--save_dir", str(tmp_path / "run"), "--device", "cpu",
            *[a for o in TINY + data_opts(sidd) + opts for a in ("--opt", o.format(**names))]]
    assert engine.main(DenoisingReal, argv, prog="train_denoising_real.py") == 1
    err = capsys.readouterr().err
    assert err.startswith("train_denoising_real.py: error: ") and message.format(**names) in err
    assert err.count("\n") == 1


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_small_config_learns_on_cpu(tmp_path, sidd):
    opts = data_opts(sidd) + [f"save_dir={tmp_path}", "epochs=2", "iters_per_epoch=15", "print_freq=15",
                              "image_freq=30", "patch_size=32"]
    cfg = load_config(SMALL, DenoisingReal.schema(), opts)
    result = engine.train(DenoisingReal, cfg, device="cpu")
    first, last = result.history[0], result.history[-1]
    assert last["train/loss"] < 0.7 * first["train/loss"], result.history
    assert last["val/sidd/psnr"] > first["val/sidd/psnr"], result.history
    ckpt = read_checkpoint(tmp_path / "models" / "model_best.pth")
    assert ckpt["arch"]["task"] == "denoising-real" and ckpt["arch"]["kwargs"]["n_feat"] == [16, 32]
    load_checkpoint(build_model("denoising-real", **ckpt["arch"]["kwargs"]), tmp_path / "models" / "model_best.pth")
    assert "iter 15/15" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_script_exits_without_traceback(root, tmp_path):
    cmd = [sys.executable, str(root / "train_denoising_real.py"), "--config", SMALL, "--device", "cpu",
           "--save_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=sub_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("train_denoising_real.py: error: config key 'train_pch_dir': folder not found: "
                                  "data/SIDD/SIDD_Medium_Srgb/Data/patchs256/noisy")
    assert proc.stderr.count("\n") == 1


# --------------------------------------------------------------------------- camera_synthetic source


def camera_opts(shared, *extra):
    return ["train_source=camera_synthetic", "train_pch_dir=null",
            f"train_dirs={shared / 'trainsets' / 'CBSD432-sample'}", f"val_dir={shared / 'testsets' / 'Set5'}", *extra]


def test_camera_synthetic_source_gives_clean_noisy_pairs(shared):
    cfg = load_config(SMALL, DenoisingReal.schema(),
                      TINY + camera_opts(shared, "jpeg_quality=[80,95]", "scale_range=[0.7,0.9]"))
    task = DenoisingReal(cfg)
    data = task.build_train_set(6)
    assert type(data).__name__ == "CameraNoiseTrain" and data.jpeg_quality == [80, 95]
    assert data.scale_range == (0.7, 0.9)
    noisy, clean = data[0]
    assert noisy.shape == clean.shape == (3, 24, 24) and not torch.equal(noisy, clean)
    (val,) = task.build_val_sets()
    assert val.name == "camera_synthetic" and len(val.dataset) == 5
    a, b = val.dataset[1], val.dataset[1]
    assert torch.equal(a[0], b[0]) and a[0].shape[1] % 2 == 0 and a[0].shape[2] % 2 == 0


def test_shipped_compact_real_config_loads(root, shared):
    cfg = load_config(root / "configs" / "denoising_real_compact.json", DenoisingReal.schema())
    assert cfg.train_source == "camera_synthetic" and cfg.sigma_chn == 3 and cfg.bf16 == "auto"
    assert cfg.train_dirs and all(d.is_dir() for d in map(type(root), cfg.train_dirs))


@pytest.mark.parametrize("opts, message", [
    (["train_source=camera_synthetic", "train_dirs=[]"], "config key 'train_dirs': train_source 'camera_synthetic' "
                                                          "needs folders of clean images"),
    (["jpeg_quality=[95,80]"], "config key 'jpeg_quality': expected [low, high] with 1 <= low <= high <= 100"),
    (["jpeg_quality=[80,120]"], "config key 'jpeg_quality': must be <= 100, got 120"),
    (["patch_size=25"], "config key 'patch_size': must be even for camera_synthetic"),
    (["val_dir=null"], "no validation data: set val_dir (clean images) or val_freq=0"),
    (["train_source=sidd", "train_pch_dir=null"], "config key 'train_pch_dir' is required with train_source 'sidd'"),
    (["scale_range=[0.9,0.5]"], "config key 'scale_range': expected [low, high] with 0.05 <= low <= high <= 1"),
])
def test_camera_synthetic_bad_config_gives_one_line(tmp_path, capsys, shared, opts, message):
    argv = ["--config", SMALL, "--save_dir", str(tmp_path / "run"), "--device", "cpu",
            *[a for o in TINY + camera_opts(shared) + opts for a in ("--opt", o)]]
    assert engine.main(DenoisingReal, argv, prog="train_denoising_real.py") == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.slow
def test_camera_synthetic_small_run_learns(tmp_path, shared):
    opts = camera_opts(shared, f"save_dir={tmp_path}", "epochs=2", "iters_per_epoch=15", "print_freq=15",
                       "image_freq=0", "patch_size=32", "val_max_images=2")
    cfg = load_config(SMALL, DenoisingReal.schema(), opts)
    result = engine.train(DenoisingReal, cfg, device="cpu")
    first, last = result.history[0], result.history[-1]
    assert last["train/loss"] < 0.7 * first["train/loss"], result.history
    assert last["val/camera_synthetic/psnr"] > first["val/camera_synthetic/psnr"], result.history
