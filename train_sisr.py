#!/usr/bin/env python
"""Train VIRNet for blind super-resolution (x2, x3 or x4).

    python train_sisr.py --config configs/sisr_x4.json --save_dir runs/sisr_x4
    torchrun --nproc_per_node=4 train_sisr.py --config configs/sisr_x4.json --save_dir runs/sisr_x4
    python train_sisr.py --config configs/sisr_x4_small.json --device cpu      # CPU, minutes
    python train_sisr.py --save_dir runs/sisr_x4 --resume auto

HR crops of the config's image folders get a random anisotropic Gaussian kernel (the K-Net's
target), blur, down-sampling and noise (+ JPEG with ``add_jpeg``; ``datasets.sisr``); the loss is
the SISR ELBO (``loss.steps``); validation is Set14 with a fixed kernel, PSNR / SSIM on Y. The
reference's two training slips are reproduced by default, each behind a switch (docs/faithfulness.md):
``kernel_grid`` ("xy" corrects it) and ``prior_uses_variance`` (true corrects it). Everything else
(launchers, DDP, checkpoints, logs) is ``utils.training``.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from torch.utils.data import Subset

from datasets.image_check import check_images
from datasets.rescale import SCALE_RANGE_KEY
from datasets.sisr import SISRTrain, SISRValidation
from loss.steps import sisr_train_step, sisr_val_step
from networks import build_model, task_spec
from utils.config import ConfigError, Key
from utils.errors import user_errors
from utils.training import ENGINE_KEYS, Task, ValSet, main

KERNEL_REACH = 2.5
"""Standard deviations of the widest training kernel a ``k_size`` square must hold on each side."""


def kernel_support(sf: int) -> int:
    """The smallest odd kernel side holding ``KERNEL_REACH`` standard deviations on each side of the
    widest training kernel (std sf along both axes, ``datasets.sisr.sample_kernel``): 11, 17 and 21 at
    x2, x3 and x4 (21: the reference's k_size)."""
    return 2 * math.ceil(KERNEL_REACH * sf) + 1


class SISR(Task):
    """Blind SR: VIRAttResUNetSR (S-Net, K-Net, R-Net) and the SISR ELBO."""

    task = "sisr"
    description = "Train VIRNet for blind super-resolution on HR images with random kernels and noise."
    data_key = "train_dirs"  # an HR image smaller than hr_size is reported as a problem of train_dirs
    crop_key = "hr_size"
    resume_fixed = ("sf", "add_jpeg")  # the scale the weights learn; add_jpeg sets the S-Net's pooling
    keys = {
        "sf": Key("int", 4, "scale factor", choices=task_spec("sisr").scales),
        "hr_size": Key("int", 192, "side of the HR training crop (LR side: ceil(hr_size / sf))", minimum=8),
        "train_dirs": Key("dirs", [], "folders of HR training images or patches (all images in each)"),
        "val_dir": Key("dir", "../shared/testsets/Set14", "validation HR images (fixed kernel and noise)"),
        "val_max_images": Key("int", 0, "use only the first N validation images (0: all)", minimum=0),
        "scale_range": SCALE_RANGE_KEY,
        "k_size": Key("int", 21, "kernel side", minimum=3),
        "kernel_shift": Key("bool", False, "shift the kernel centre by 0.5 (sf - k_size % 2)"),
        "downsampler": Key("str", "bicubic", "bicubic (MATLAB imresize) or direct (every sf-th pixel)",
                           choices=("bicubic", "direct")),
        "noise_level": Key("floats", [0.01, 15], "range of the Gaussian noise std, 0-255 scale", minimum=0,
                           pair=True),
        "noise_jpeg": Key("floats", [0.01, 10], "range of the noise std before JPEG, 0-255 scale", minimum=0,
                          pair=True),
        "add_jpeg": Key("bool", False, "half of the samples get noise + JPEG; the S-Net then gives a "
                        "variance map (noise_avg = not add_jpeg) and the prior is the windowed estimate"),
        "var_window": Key("int", 9, "p: alpha0 = p^2 / 2; also the window of the JPEG-case prior", minimum=2),
        "eps2": Key("float", 1e-5, "variance eps^2 of q(z) and of its prior (> 0: the KL divides by it)", above=0),
        "r2": Key("float", 1e-4, "variance of the posterior and prior of rho (> 0: the KL divides by it)", above=0),
        "kappa0": Key("float", 50, "inverse-gamma concentration of the kernel variances (> 1: the posterior's "
                       "shape is kappa0 - 1)", above=1),
        "penalty_K": Key("floats", [0.02, 2], "[weight of the rho KL, weight of the kernel KL]", minimum=0,
                         min_items=2, max_items=2),
        "clip_grad_R": Key("float", 5e2, "max gradient L2 norm of the R-Net", minimum=0),
        "clip_grad_S": Key("float", 1e2, "max gradient L2 norm of the S-Net", minimum=0),
        "clip_grad_K": Key("float", 5e2, "max gradient L2 norm of the K-Net", minimum=0),
        "kernel_grid": Key("str", "ij", "grid on which the loss rebuilds the sampled kernel: 'ij' as the "
                           "reference (transposed for anisotropic kernels), 'xy' the data's orientation",
                           choices=("ij", "xy")),
        "prior_uses_variance": Key("bool", False, "Gaussian-noise prior: false passes the noise std as "
                                   "the reference does, true its square (the variance)"),
        "image_freq": dataclasses.replace(ENGINE_KEYS["image_freq"], default=2000),
        "train_hr_patchs": Key("dir", None, "reference config key: an HR folder added to train_dirs"),
        "val_hr_path": Key("dir", None, "reference config key: replaces val_dir when set"),
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        self.refuse_if(cfg.hr_size % cfg.sf, f"config keys 'hr_size' and 'sf': the HR crop ({cfg.hr_size}) must be "
                                             f"a multiple of the scale factor ({cfg.sf})")
        self.refuse_if(cfg.hr_size < cfg.k_size, f"config keys 'hr_size' and 'k_size': the HR crop ({cfg.hr_size}) "
                                                 f"must be at least as large as the blur kernel ({cfg.k_size})")
        self.refuse_if(cfg.k_size % 2 == 0 or cfg.k_size < kernel_support(cfg.sf),
                       f"config keys 'k_size' and 'sf': the kernel side must be odd (the blur is centred on a pixel) "
                       f"and at least {kernel_support(cfg.sf)} at x{cfg.sf} (it must hold the widest training "
                       f"kernel), got {cfg.k_size}")
        self.refuse_if(cfg.add_jpeg and cfg.var_window // 2 >= cfg.hr_size // cfg.sf,
                       f"config keys 'var_window' and 'hr_size': with add_jpeg the prior's window is reflect-padded "
                       f"by var_window // 2, which must be smaller than the LR crop ({cfg.hr_size // cfg.sf}), got "
                       f"{cfg.var_window}")

    def build_model(self):
        return build_model(self.task, sf=self.cfg.sf, noise_avg=not self.cfg.add_jpeg, **self.architecture())

    def build_train_set(self, length):
        cfg = self.cfg
        folders = list(cfg.train_dirs) + ([cfg.train_hr_patchs] if cfg.train_hr_patchs else [])
        if not folders:
            raise ConfigError("config key 'train_dirs': no training image folder given")
        with user_errors(ValueError, prefix="config key 'train_dirs'", error=ConfigError):
            data = SISRTrain(folders, length, cfg.hr_size, cfg.sf, k_size=cfg.k_size, kernel_shift=cfg.kernel_shift,
                             downsampler=cfg.downsampler, noise_level=cfg.noise_level, noise_jpeg=cfg.noise_jpeg,
                             add_jpeg=cfg.add_jpeg, seed=cfg.seed, scale_range=cfg.scale_range)
        data.paths = self.checked_images(data.paths, check_images)
        return data

    def build_val_sets(self):
        cfg = self.cfg
        folder = cfg.val_hr_path or cfg.val_dir
        sets = []
        for noise in ("gaussian", "jpeg") if cfg.add_jpeg else ("gaussian",):
            with user_errors(ValueError, prefix="config key 'val_dir'", error=ConfigError):
                data = SISRValidation(folder, cfg.sf, k_size=cfg.k_size, downsampler=cfg.downsampler,
                                      noise=noise, kernel_shift=cfg.kernel_shift)
            if cfg.val_max_images:
                data = Subset(data, range(min(cfg.val_max_images, len(data))))
            name = Path(folder).name.lower() + ("" if noise == "gaussian" else "_jpeg")
            sets.append(ValSet(name, data, batch_size=1))
        return sets

    def train_step(self, model, batch, ctx):
        return sisr_train_step(model, batch, self.cfg, ctx)

    def val_step(self, model, batch, ctx):
        return sisr_val_step(model, batch, self.cfg, ctx)


if __name__ == "__main__":
    sys.exit(main(SISR))
