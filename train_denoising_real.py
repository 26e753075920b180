#!/usr/bin/env python
"""Train VIRNet for real-world (camera) noise on SIDD, or on clean images with synthesized noise.

    python -m datasets.prepare_sidd --sidd_dir data/SIDD/SIDD_Medium_Srgb/Data     # once
    python train_denoising_real.py --config configs/denoising_real.json --save_dir runs/real
    torchrun --nproc_per_node=4 train_denoising_real.py --config configs/denoising_real.json
    python train_denoising_real.py --save_dir runs/real --resume auto

Samples: random flipped / rotated crops of the prepared SIDD patch pairs, or (``train_source:
"camera_synthetic"``, not in the reference) of the clean ``train_dirs`` images with synthesized camera
noise (``datasets.camera_noise``); every batch mixed by MixUp; variance prior: the squared residual
filtered per channel by a ``var_window`` Gaussian window. Validation: the SIDD validation blocks, or
``val_dir``'s images with fixed camera noise. The rest (launchers, DDP, checkpoints) is ``utils.training``.
"""
from __future__ import annotations

import dataclasses
import sys

from torch.utils.data import Subset

from datasets.camera_noise import CameraNoiseTrain, CameraNoiseVal
from datasets.image_check import check_images
from datasets.rescale import NO_RESCALE, SCALE_RANGE_KEY
from datasets.real import SIDDBlocks, SIDDPatchTrain, mixup, sidd_block_paths
from loss.steps import denoising_train_step, denoising_val_step
from utils.config import ConfigError, Key
from utils.degradation import noise_prior
from utils.errors import user_errors
from utils.image_io import read_image_uint8
from utils.training import ENGINE_KEYS, Task, ValSet, main


class DenoisingReal(Task):
    """Real-noise denoising: VIRAttResUNet with sigma_chn 3, MixUp and the windowed variance prior."""

    task = "denoising-real"
    description = ("Train VIRNet for real camera noise: on SIDD noisy / clean patch pairs (train_source sidd, "
                   "the reference), or without SIDD on any folder of clean photographs with synthesized camera "
                   "noise (train_source camera_synthetic, e.g. configs/denoising_real_compact.json).")
    crop_key = "patch_size"
    keys = {
        "image_freq": dataclasses.replace(ENGINE_KEYS["image_freq"], default=3000),
        "patch_size": Key("int", 128, "training crop size, cut from the prepared patches", minimum=8),
        "train_source": Key("str", "sidd", "training pairs: sidd (the reference: prepared SIDD patches) "
                            "or camera_synthetic (clean images of train_dirs + synthesized camera noise)",
                            choices=("sidd", "camera_synthetic")),
        "train_pch_dir": Key("dir", None, "folder of noisy SIDD training patches (*.png, made by "
                             "python -m datasets.prepare_sidd); the clean ones are in its sibling gt/"),
        "train_dirs": Key("dirs", [], "camera_synthetic: folders of clean training images"),
        "jpeg_quality": Key("ints", [], "camera_synthetic: [low, high] JPEG quality range of the "
                            "synthesized images ([]: no JPEG)", minimum=1, maximum=100, pair=True),
        "scale_range": SCALE_RANGE_KEY,
        "plain_noise_fraction": Key("float", 0.0, "camera_synthetic: share of the training samples that get plain "
                                    "per-pixel Poisson-Gaussian noise (datasets.plain_noise) instead of camera "
                                    "noise (0: none, the reference recipe)", minimum=0, maximum=1),
        "val_dir": Key("dir", None, "sidd: folder of ValidationNoisyBlocksSrgb.mat and ValidationGtBlocksSrgb.mat "
                       "(MATLAB v5 or v7.3); camera_synthetic: folder of clean validation images"),
        "val_max_images": Key("int", 0, "camera_synthetic: validate on the first N images (0: all)", minimum=0),
        "test_noisy_path": Key("file", None, "reference key: the noisy validation blocks (with test_gt_path)"),
        "test_gt_path": Key("file", None, "reference config key: the clean validation block file"),
        "val_max_blocks": Key("int", 0, "validate on N blocks spread evenly over the images "
                              "(every k-th block; 0: all, 1280 in SIDD)", minimum=0),
        "val_batch_size": Key("int", 4, "validation batch size (the reference: 4)", minimum=1),
        "mixup": Key("bool", True, "MixUp of every training batch (the reference's, from MPRNet)"),
        "var_window": Key("int", 7, "odd size p of the variance-prior window; alpha0 = p^2 / 2", minimum=3),
        "eps2": Key("float", 1e-6, "variance eps^2 of q(z) and of its prior (> 0: the KL divides by it)", above=0),
        "clip_grad_R": Key("float", 5e2, "max gradient L2 norm of the R-Net", minimum=0),
        "clip_grad_S": Key("float", 1e2, "max gradient L2 norm of the S-Net", minimum=0),
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        camera = cfg.train_source == "camera_synthetic"
        self.refuse_if(cfg.var_window % 2 == 0, f"config key 'var_window': must be odd, got {cfg.var_window}")
        self.refuse_if(cfg.var_window // 2 >= cfg.patch_size,
                       f"config keys 'var_window' and 'patch_size': the prior's window is reflect-padded by "
                       f"var_window // 2, which must be smaller than the crop ({cfg.patch_size}), got {cfg.var_window}")
        self.refuse_if(not camera and cfg.train_pch_dir is None, "config key 'train_pch_dir' is required with "
                       "train_source 'sidd' (the folder made by python -m datasets.prepare_sidd)")
        self.refuse_if(camera and not cfg.train_dirs, "config key 'train_dirs': train_source 'camera_synthetic' "
                       "needs folders of clean images")
        self.refuse_if(camera and cfg.patch_size % 2, f"config key 'patch_size': must be even for camera_synthetic "
                       f"(Bayer cells), got {cfg.patch_size}")
        self.refuse_if(not camera and tuple(cfg.scale_range) != NO_RESCALE, "config key 'scale_range': applies to "
                       "train_source 'camera_synthetic' only (resizing SIDD patches would resize their noise)")
        self.refuse_if(not camera and cfg.plain_noise_fraction > 0, "config key 'plain_noise_fraction': applies "
                       "to train_source 'camera_synthetic' only (SIDD patches come with their own noise)")

    def build_train_set(self, length):
        cfg = self.cfg
        if cfg.train_source == "camera_synthetic":
            return CameraNoiseTrain(self.checked_images(self.image_files("train_dirs"), check_images), length,
                                    cfg.patch_size, seed=cfg.seed, jpeg_quality=cfg.jpeg_quality or None,
                                    scale_range=cfg.scale_range, plain_fraction=cfg.plain_noise_fraction)
        with user_errors(ValueError, prefix="config key 'train_pch_dir'", error=ConfigError):
            data = SIDDPatchTrain(cfg.train_pch_dir, length, cfg.patch_size, seed=cfg.seed)
        good = set(self.checked_images([*data.noisy_paths, *data.gt_paths], check_images))
        pairs = data.keep_pairs(good)  # drops the pairs with an unreadable file
        self.refuse_if(pairs == 0, f"config key 'train_pch_dir': no patch pair of {cfg.train_pch_dir} can be read")
        height, width = read_image_uint8(data.noisy_paths[0]).shape[:2]
        self.refuse_if(min(height, width) < cfg.patch_size, f"config key 'patch_size': {cfg.patch_size} is larger "
                       f"than the training patches ({width} x {height}, e.g. {data.noisy_paths[0]})")
        return data

    def build_val_sets(self):
        cfg = self.cfg
        if cfg.train_source == "camera_synthetic":
            self.refuse_if(cfg.val_dir is None, "no validation data: set val_dir (clean images) or val_freq=0")
            paths = self.image_files("val_dir", limit=cfg.val_max_images)
            return [ValSet("camera_synthetic", CameraNoiseVal(paths), batch_size=1)]
        files = (cfg.test_noisy_path, cfg.test_gt_path)  # the reference's keys, else val_dir's files
        self.refuse_if(files.count(None) == 1, "config keys 'test_noisy_path' and 'test_gt_path' go together; "
                       "set both")
        self.refuse_if(None in files and cfg.val_dir is None, "no validation data: set val_dir (the folder of "
                       "ValidationNoisyBlocksSrgb.mat and ValidationGtBlocksSrgb.mat), or val_freq=0")
        with user_errors(FileNotFoundError, ValueError, prefix="validation blocks", error=ConfigError):
            data = SIDDBlocks(*(sidd_block_paths(cfg.val_dir) if None in files else files))
        count = cfg.val_max_blocks
        if 0 < count < len(data):  # every k-th block
            data = Subset(data, range(0, len(data) // count * count, len(data) // count))
        return [ValSet("sidd", data, batch_size=cfg.val_batch_size)]

    def train_step(self, model, batch, ctx):
        noisy, clean = mixup(*batch) if self.cfg.mixup else batch
        prior = noise_prior(noisy, clean, self.cfg.var_window)
        return denoising_train_step(model, noisy, clean, prior, self.cfg.var_window, self.cfg.eps2, ctx)

    def val_step(self, model, batch, ctx):
        return denoising_val_step(model, batch, ctx)


if __name__ == "__main__":
    sys.exit(main(DenoisingReal))
