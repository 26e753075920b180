"""The project-trained weights that ship in model_zoo/: small, float16, strict to load, used by the
demos by default, and still as good as when they were measured (regression guards: each floor
sits a little under the figure measured at export time, quoted beside it)."""
import json

import numpy as np
import pytest
import torch

import demo_test_sisr
import demo_test_syn
import networks
from datasets.camera_noise import CameraNoiseVal
from utils.degradation import degrade_sr, sr_test_kernels
from utils.image_io import read_image, read_image_uint8, write_image
from utils.inference import Restorer, load_model
from utils.metrics import calculate_psnr
from utils.resize import imresize

SYN, SR_X4, REAL = (networks.weights_catalogue()[name].file
                    for name in ("denoising-syn-compact", "sisr-x4-compact", "denoising-real-compact"))
MAX_BYTES = 8_000_000
CPU = torch.device("cpu")

SET5_SIGMA25_FLOOR = 31.80
"""Mean PSNR (RGB) floor of the compact denoiser on Set5 with i.i.d. noise 25 from default_rng(0);
measured 32.00 dB (noisy input 20.82 dB) when the 2.13 M weights were exported after 11520
iterations and fine-tunes of 3200 and 4480 iterations on 128 x 128 patches, the second with
ema_decay (after the first: 31.97 dB; after 11520 and after 8960: 31.95 dB; after 3520: 31.83 dB;
the earlier 0.65 M model: 31.57 dB)."""
SET5_CAMERA_FLOOR = 35.75
"""Mean PSNR (RGB) floor of the compact real-noise denoiser on Set5 with synthesized camera noise
(``CameraNoiseVal``, seed 2024); measured 35.94 dB (noisy input 30.55 dB) when the weights were exported."""
SET5_X4_FLOOR = 28.63
"""Mean PSNR (Y, border 16) floor of the compact SR x4 model on Set5, test kernels 1 and 6, noise 2.55;
measured 28.83 dB (bicubic 26.49 dB) when the 2.47 M weights were exported after two fine-tunes
(1200 and 800 iterations) of the 4800-iteration weights (those: 28.67 dB; after the first: 28.79 dB;
after 2800 iterations: 28.53 dB; the earlier 0.83 M model: 28.43 dB)."""
SET5_X4_KERNEL_ERROR_CEILING = np.array([2.7, 2.7, 0.33])
"""Ceiling of the mean absolute error of the K-Net's (var1, var2, rho) in the same test; measured
(2.64, 2.64, 0.30) at export (the 4800-iteration weights: (2.46, 2.50, 0.31); after 2800
iterations: (3.11, 3.09, 0.30); the 0.83 M model: (3.74, 3.83, 0.31)). The K-Net estimates the
blur's size only roughly and its orientation not at all (docs/model_zoo.md), so this guards the
level, not kernel recognition."""


def _zoo(root, name):
    return root / "model_zoo" / name


@pytest.mark.parametrize("entry", [e for e in networks.weights_catalogue().values() if e.origin == "shipped"],
                         ids=lambda e: e.name)
def test_shipped_weights_are_small_fp16_and_load_strictly(entry):
    path, task = entry.path, entry.task
    assert path.stat().st_size <= MAX_BYTES
    ckpt = networks.read_checkpoint(path)  # .pth or .safetensors, as the catalogue names it
    assert ckpt["arch"]["task"] == task and ckpt["meta"]["dtype"] == "float16" and ckpt["meta"]["note"]
    floats = [v for v in ckpt["model_state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    net = load_model(task, str(path), path, CPU, sf=entry.scale)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    count = sum(p.numel() for p in net.parameters())
    # compact: at most 3 M parameters and half the released model (SR x4: 2.47 M of 5.90 M)
    released = sum(p.numel() for p in networks.build_model(task).parameters())
    assert count == ckpt["meta"]["parameters"] <= min(3_000_000, released / 2)
    assert net.weights_info.startswith(f"{path} (compact {task} architecture")


def _set5(shared):
    return [read_image_uint8(p) for p in sorted((shared / "testsets/Set5").glob("*.png"))]


def test_compact_denoiser_restores_set5_sigma25(root, shared):
    restorer = Restorer(load_model("denoising-syn", str(_zoo(root, SYN)), "", CPU))
    rng = np.random.default_rng(0)
    scores = []
    for clean in _set5(shared):
        noisy = clean.astype(np.float32) / 255 + (rng.standard_normal(clean.shape) * 25 / 255).astype(np.float32)
        result = restorer(noisy)
        scores.append((calculate_psnr(noisy, clean), calculate_psnr(result.image, clean)))
        assert np.median(result.noise_std_255) == pytest.approx(25, abs=5)
    noisy_psnr, psnr = np.mean(scores, axis=0)
    assert psnr > SET5_SIGMA25_FLOOR and psnr > noisy_psnr + 8


def test_compact_sr_x4_restores_set5(root, shared):
    restorer = Restorer(load_model("sisr", str(_zoo(root, SR_X4)), "", CPU, sf=4), sf=4)
    kernels, kinfos = sr_test_kernels(4, 21)
    psnr, bicubic, kernel_error = [], [], []
    for gt in _set5(shared):
        gt = gt[:gt.shape[0] // 4 * 4, :gt.shape[1] // 4 * 4]
        for index in (0, 5):
            lr = degrade_sr(gt.astype(np.float32) / 255, kernels[index], 4, 2.55, seed=1234)
            result = restorer(lr)
            psnr.append(calculate_psnr(result.image, gt, 16, ycbcr=True))
            bicubic.append(calculate_psnr(np.clip(imresize(lr, 4), 0, 1), gt, 16, ycbcr=True))
            kernel_error.append(np.abs(result.kinfo - kinfos[index]))
    assert np.mean(psnr) > SET5_X4_FLOOR and np.mean(psnr) > np.mean(bicubic) + 0.5
    assert np.all(np.mean(kernel_error, axis=0) < SET5_X4_KERNEL_ERROR_CEILING)


def test_readme_run_restores_the_embedded_sample_with_the_shipped_weights(root, tmp_path, capsys):
    assert demo_test_syn.DEFAULT_CKPT == _zoo(root, SYN)
    assert demo_test_syn.main(["-o", str(tmp_path)]) == 0  # the README's no-input sample command
    out = capsys.readouterr().out
    assert f"weights: {_zoo(root, SYN)} (compact denoising-syn architecture" in out
    (row,) = json.loads((tmp_path / "quicklook.json").read_text())
    assert row["image"] == "chelsea" and row["noise"] == "niid"
    assert row["psnr"] > row["psnr_noisy"] + 8


def test_sr_demo_uses_the_shipped_weights_for_x4_only(root, shared, tmp_path, capsys):
    assert demo_test_sisr.default_ckpt(4) == _zoo(root, SR_X4)
    assert demo_test_sisr.default_ckpt(2) == _zoo(root, "virnet_sisr_x2.pth")
    gt = read_image_uint8(shared / "testsets/Set5/bird_GT.png")
    kernel = sr_test_kernels(4, 21)[0][0]
    write_image(tmp_path / "bird_lr.png", degrade_sr(gt.astype(np.float32) / 255, kernel, 4, 2.55, seed=0))
    assert demo_test_sisr.main(["-i", str(tmp_path / "bird_lr.png"), "-o", str(tmp_path / "out")]) == 0
    assert f"weights: {_zoo(root, SR_X4)} (compact sisr architecture" in capsys.readouterr().out
    assert read_image(tmp_path / "out/bird_lr.png").shape == (288, 288, 3)


def test_compact_real_denoiser_restores_set5_camera_noise(root, shared):
    restorer = Restorer(load_model("denoising-real", str(_zoo(root, REAL)), "", CPU))
    pairs = CameraNoiseVal(sorted((shared / "testsets/Set5").glob("*.png")), seed=2024)
    scores = []
    for noisy, clean in (tuple(t.numpy().transpose(1, 2, 0) for t in pair) for pair in pairs):
        scores.append((calculate_psnr(noisy, clean), calculate_psnr(restorer(noisy).image, clean)))
    noisy_psnr, psnr = np.mean(scores, axis=0)
    assert psnr > SET5_CAMERA_FLOOR and psnr > noisy_psnr + 4


def test_real_demo_defaults_to_the_compact_model_without_the_authors_file(root):
    if (root / "model_zoo/virnet_denoising_real.pth").exists():
        pytest.skip("the authors' real-noise weights are installed")
    assert networks.default_weights("denoising-real") == _zoo(root, REAL)
