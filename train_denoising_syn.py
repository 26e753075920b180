#!/usr/bin/env python
"""Train VIRNet for synthetic (non-i.i.d. Gaussian) denoising.

    python train_denoising_syn.py --config configs/denoising_syn.json --save_dir runs/syn
    torchrun --nproc_per_node=4 train_denoising_syn.py --config configs/denoising_syn.json
    python train_denoising_syn.py --save_dir runs/syn --resume auto

Clean patches come from the config's image folders and get noise generated on the fly
(``datasets.denoising_syn``); the variance prior is the generated variance map; validation is
CBSD68 with fixed noise. Everything else (launchers, DDP, checkpoints, logs) is ``utils.training``.
"""
from __future__ import annotations

import sys

from datasets.denoising_syn import NOISE_TYPES, SyntheticDenoisingTrain, SyntheticDenoisingVal
from datasets.image_check import check_images
from datasets.rescale import SCALE_RANGE_KEY
from loss.steps import denoising_train_step, denoising_val_step
from utils.config import Key
from utils.training import Task, ValSet, main

LEGACY_DATA_KEYS = ("CBSD_path", "WED_path", "Flickr", "DIV2K")


class DenoisingSyn(Task):
    """Synthetic denoising: VIRAttResUNet with sigma_chn 1 and the denoising ELBO."""

    task = "denoising-syn"
    description = "Train VIRNet on clean images with generated non-i.i.d. Gaussian noise."
    crop_key = "patch_size"
    keys = {
        "patch_size": Key("int", 128, "training crop size", minimum=8),
        "train_dirs": Key("dirs", [], "folders of clean training images (all images in each)"),
        "noise_type": Key("str", "niid", "training noise: niid (the reference), iid, or mix (both)",
                          choices=NOISE_TYPES),
        "iid_fraction": Key("float", 0.5, "share of i.i.d. noise maps when noise_type is mix",
                            minimum=0, maximum=1),
        "scale_range": SCALE_RANGE_KEY,
        "val_dir": Key("dir", "../shared/testsets/CBSD68", "validation images (fixed noise)"),
        "val_max_images": Key("int", 0, "use only the first N validation images (0: all)", minimum=0),
        "var_window": Key("int", 7, "p: alpha0 = p^2 / 2 of the inverse-gamma prior", minimum=2),
        "eps2": Key("float", 1e-6, "variance eps^2 of q(z) and of its prior (> 0: the KL divides by it)", above=0),
        "clip_grad_R": Key("float", 1e3, "max gradient L2 norm of the R-Net", minimum=0),
        "clip_grad_S": Key("float", 1e2, "max gradient L2 norm of the S-Net", minimum=0),
        **{k: Key("dir", None, "reference config key: a clean-image folder added to train_dirs")
           for k in LEGACY_DATA_KEYS},
        "net_type": Key("str", "AttResUNet", "reference config key, unused", choices=("AttResUNet",)),
    }

    def build_train_set(self, length):
        cfg = self.cfg
        paths = self.checked_images(self.image_files("train_dirs", [cfg[k] for k in LEGACY_DATA_KEYS
                                                                    if cfg[k] is not None]), check_images)
        return SyntheticDenoisingTrain(paths, length, cfg.patch_size, seed=cfg.seed, noise_type=cfg.noise_type,
                                       iid_fraction=cfg.iid_fraction, scale_range=cfg.scale_range)

    def build_val_sets(self):
        paths = self.image_files("val_dir", limit=self.cfg.val_max_images)
        return [ValSet("cbsd68", SyntheticDenoisingVal(paths), batch_size=1)]

    def train_step(self, model, batch, ctx):
        noisy, clean, variance = batch
        return denoising_train_step(model, noisy, clean, variance, self.cfg.var_window, self.cfg.eps2, ctx,
                                    prior_name="sigma_gt")

    def val_step(self, model, batch, ctx):
        return denoising_val_step(model, batch, ctx)


if __name__ == "__main__":
    sys.exit(main(DenoisingSyn))
