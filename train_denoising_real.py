#!/usr/bin/env python
"""Train VIRNet for real-world (camera) noise on SIDD, or on clean images with synthesized
camera noise.

    python -m datasets.prepare_sidd --sidd_dir data/SIDD/SIDD_Medium_Srgb/Data     # once
    python train_denoising_real.py --config configs/denoising_real.json --save_dir runs/real
    torchrun --nproc_per_node=4 train_denoising_real.py --config configs/denoising_real.json
    python train_denoising_real.py --save_dir runs/real --resume auto

Training samples are random crops of the prepared SIDD patch pairs, each with one of the eight
flips / rotations (``datasets.real.SIDDPatchTrain``). Every batch is then mixed with MixUp, drawn
from the global torch RNG as in the reference, and the variance prior is the squared residual of
the mixed pair filtered per colour channel by a ``var_window`` Gaussian window
(``utils.degradation.noise_prior``; sigma_chn 3). Validation: the SIDD validation blocks
(``ValidationNoisyBlocksSrgb.mat`` / ``ValidationGtBlocksSrgb.mat``, MATLAB v5 or v7.3), PSNR and
SSIM on uint8 RGB. Everything else (DDP, checkpoints, logs) is ``utils.engine``.

``train_source: "camera_synthetic"`` (not in the reference) trains without SIDD: random crops of
the clean images in ``train_dirs`` get camera noise synthesized by unprocessing and processing
them again (``datasets.camera_noise``, Brooks et al. 2019); MixUp and the variance prior as
above. Validation is then ``val_dir``'s clean images with fixed synthesized camera noise.
"""
from __future__ import annotations

import dataclasses
import sys

from torch.utils.data import Subset

from datasets.camera_noise import CameraNoiseTrain, CameraNoiseVal
from datasets.real import SIDDBlocks, SIDDPatchTrain, mixup, sidd_block_paths
from utils.config import ConfigError, Key
from utils.degradation import noise_prior
from utils.denoising_steps import build_denoiser, denoising_train_step, denoising_val_step
from utils.engine import ENGINE_KEYS, Task, ValSet, main
from utils.image_io import list_images, read_image_uint8


class DenoisingReal(Task):
    """Real-noise denoising: VIRAttResUNet with sigma_chn 3, MixUp and the windowed variance prior."""

    name = "denoising_real"
    description = "Train VIRNet on SIDD noisy / clean patch pairs (real camera noise)."
    default_config = "configs/denoising_real.json"
    keys = {
        "image_freq": dataclasses.replace(ENGINE_KEYS["image_freq"], default=3000),
        "im_chn": Key("int", 3, "image channels (RGB only)", choices=(3,)),
        "sigma_chn": Key("int", 3, "channels of the S-Net variance map (3: one per colour)", choices=(1, 3)),
        "patch_size": Key("int", 128, "training crop size, cut from the prepared patches", minimum=8),
        "dep_S": Key("int", 8, "S-Net (DnCNN) depth", minimum=2),
        "n_feat": Key("ints", [96, 160, 224, 288], "R-Net (U-Net) widths per scale", minimum=1),
        "n_resblocks": Key("int", 3, "residual blocks per U-Net scale", minimum=1),
        "noise_cond": Key("bool", True, "feed sqrt(variance) from the S-Net to the R-Net"),
        "extra_mode": Key("str", "Input", "where the variance map enters the R-Net",
                          choices=("Null", "Input", "Down", "Both")),
        "train_source": Key("str", "sidd", "training pairs: sidd (the reference: prepared SIDD patches) "
                            "or camera_synthetic (clean images of train_dirs + synthesized camera noise)",
                            choices=("sidd", "camera_synthetic")),
        "train_pch_dir": Key("dir", None, "folder of noisy SIDD training patches (*.png, made by "
                             "python -m datasets.prepare_sidd); the clean ones are in its sibling gt/"),
        "train_dirs": Key("dirs", [], "camera_synthetic: folders of clean training images"),
        "jpeg_quality": Key("ints", [], "camera_synthetic: [low, high] JPEG quality range of the "
                            "synthesized images ([]: no JPEG)", minimum=1),
        "val_dir": Key("dir", None, "sidd: folder holding ValidationNoisyBlocksSrgb.mat and "
                       "ValidationGtBlocksSrgb.mat (MATLAB v5 or v7.3); camera_synthetic: folder of "
                       "clean validation images"),
        "val_max_images": Key("int", 0, "camera_synthetic: validate on the first N images (0: all)",
                              minimum=0),
        "test_noisy_path": Key("file", None, "reference config key: the noisy validation block file "
                               "(with test_gt_path, instead of val_dir)"),
        "test_gt_path": Key("file", None, "reference config key: the clean validation block file"),
        "val_max_blocks": Key("int", 0, "validate on N blocks spread evenly over the images "
                              "(every k-th block; 0: all, 1280 in SIDD)", minimum=0),
        "val_batch_size": Key("int", 4, "validation batch size (the reference: 4)", minimum=1),
        "mixup": Key("bool", True, "MixUp of every training batch (the reference's, from MPRNet)"),
        "var_window": Key("int", 7, "odd size p of the variance-prior window; alpha0 = p^2 / 2", minimum=3),
        "eps2": Key("float", 1e-6, "variance eps^2 of q(z) and of its prior", minimum=0),
        "clip_grad_R": Key("float", 5e2, "max gradient L2 norm of the R-Net", minimum=0),
        "clip_grad_S": Key("float", 1e2, "max gradient L2 norm of the S-Net", minimum=0),
        "port": Key("int", 0, "reference config key, unused (torchrun chooses the port)"),
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.var_window % 2 == 0:
            raise ConfigError(f"config key 'var_window': must be odd, got {cfg.var_window}")
        if cfg.train_source == "sidd" and cfg.train_pch_dir is None:
            raise ConfigError("config key 'train_pch_dir' is required with train_source 'sidd' (the folder "
                              "made by python -m datasets.prepare_sidd)")
        if cfg.train_source == "camera_synthetic":
            if not cfg.train_dirs:
                raise ConfigError("config key 'train_dirs': train_source 'camera_synthetic' needs folders "
                                  "of clean images")
            if cfg.jpeg_quality and (len(cfg.jpeg_quality) != 2 or not
                                     cfg.jpeg_quality[0] <= cfg.jpeg_quality[1] <= 100):
                raise ConfigError(f"config key 'jpeg_quality': expected [low, high] with low <= high <= 100, "
                                  f"got {cfg.jpeg_quality}")
            if cfg.patch_size % 2:
                raise ConfigError(f"config key 'patch_size': must be even for camera_synthetic "
                                  f"(Bayer cells), got {cfg.patch_size}")

    def build_model(self):
        return build_denoiser("denoising-real", self.cfg)

    def build_train_set(self, length):
        cfg = self.cfg
        if cfg.train_source == "camera_synthetic":
            paths = sorted({str(p) for folder in cfg.train_dirs for p in list_images(folder)})
            if not paths:
                raise ConfigError(f"config key 'train_dirs': no images in {', '.join(map(str, cfg.train_dirs))}")
            return CameraNoiseTrain(paths, length, cfg.patch_size, seed=cfg.seed,
                                    jpeg_quality=cfg.jpeg_quality or None)
        try:
            data = SIDDPatchTrain(cfg.train_pch_dir, length, cfg.patch_size, seed=cfg.seed)
        except ValueError as err:
            raise ConfigError(f"config key 'train_pch_dir': {err}") from None
        first = data.noisy_paths[0]
        height, width = read_image_uint8(first).shape[:2]
        if min(height, width) < cfg.patch_size:
            raise ConfigError(f"config key 'patch_size': {cfg.patch_size} is larger than the training "
                              f"patches ({width} x {height}, e.g. {first})")
        return data

    def _val_paths(self):
        """(noisy, clean) validation block files from test_noisy_path / test_gt_path or val_dir."""
        cfg = self.cfg
        if cfg.test_noisy_path is not None or cfg.test_gt_path is not None:
            if cfg.test_noisy_path is None or cfg.test_gt_path is None:
                raise ConfigError("config keys 'test_noisy_path' and 'test_gt_path' go together; set both")
            return cfg.test_noisy_path, cfg.test_gt_path
        if cfg.val_dir is None:
            raise ConfigError("no validation data: set val_dir (the folder of ValidationNoisyBlocksSrgb.mat "
                              "and ValidationGtBlocksSrgb.mat), or val_freq=0")
        return sidd_block_paths(cfg.val_dir)

    def build_val_sets(self):
        if self.cfg.train_source == "camera_synthetic":
            if self.cfg.val_dir is None:
                raise ConfigError("no validation data: set val_dir (a folder of clean images) or val_freq=0")
            paths = list_images(self.cfg.val_dir)[:self.cfg.val_max_images or None]
            if not paths:
                raise ConfigError(f"config key 'val_dir': no images in {self.cfg.val_dir}")
            return [ValSet("camera_synthetic", CameraNoiseVal(paths), batch_size=1)]
        noisy, gt = self._val_paths()
        try:
            data = SIDDBlocks(noisy, gt)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"validation blocks: {err}") from None
        count = self.cfg.val_max_blocks
        if 0 < count < len(data):
            step = len(data) // count
            data = Subset(data, range(0, step * count, step))
        return [ValSet("sidd", data, batch_size=self.cfg.val_batch_size)]

    def train_step(self, model, batch, ctx):
        noisy, clean = batch
        if self.cfg.mixup:
            noisy, clean = mixup(noisy, clean)
        prior = noise_prior(noisy, clean, self.cfg.var_window)
        return denoising_train_step(model, noisy, clean, prior, self.cfg.var_window, self.cfg.eps2, ctx)

    def val_step(self, model, batch, ctx):
        return denoising_val_step(model, batch, ctx)


if __name__ == "__main__":
    sys.exit(main(DenoisingReal))
