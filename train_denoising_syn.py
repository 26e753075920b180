#!/usr/bin/env python
"""Train VIRNet for synthetic (non-i.i.d. Gaussian) denoising.

    python train_denoising_syn.py --config configs/denoising_syn.json --save_dir runs/syn
    torchrun --nproc_per_node=4 train_denoising_syn.py --config configs/denoising_syn.json
    python train_denoising_syn.py --save_dir runs/syn --resume auto

Clean patches come from the config's image folders and get noise generated on the fly
(``datasets.denoising_syn``); the variance prior is the generated variance map; validation is
CBSD68 with fixed noise. Everything else (DDP, checkpoints, logs) is ``utils.engine``.
"""
from __future__ import annotations

import sys

from datasets.denoising_syn import NOISE_TYPES, SyntheticDenoisingTrain, SyntheticDenoisingVal
from utils.config import ConfigError, Key
from utils.denoising_steps import build_denoiser, denoising_train_step, denoising_val_step
from utils.engine import Task, ValSet, main
from utils.image_io import list_images

LEGACY_DATA_KEYS = ("CBSD_path", "WED_path", "Flickr", "DIV2K")


class DenoisingSyn(Task):
    """Synthetic denoising: VIRAttResUNet with sigma_chn 1 and the denoising ELBO."""

    name = "denoising_syn"
    description = "Train VIRNet on clean images with generated non-i.i.d. Gaussian noise."
    default_config = "configs/denoising_syn.json"
    keys = {
        "im_chn": Key("int", 3, "image channels (RGB only)", choices=(3,)),
        "sigma_chn": Key("int", 1, "channels of the S-Net variance map", choices=(1, 3)),
        "patch_size": Key("int", 128, "training crop size", minimum=8),
        "dep_S": Key("int", 5, "S-Net (DnCNN) depth", minimum=2),
        "n_feat": Key("ints", [96, 192, 288], "R-Net (U-Net) widths per scale", minimum=1),
        "n_resblocks": Key("int", 3, "residual blocks per U-Net scale", minimum=1),
        "noise_cond": Key("bool", True, "feed sqrt(variance) from the S-Net to the R-Net"),
        "extra_mode": Key("str", "Input", "where the variance map enters the R-Net",
                          choices=("Null", "Input", "Down", "Both")),
        "train_dirs": Key("dirs", [], "folders of clean training images (all images in each)"),
        "noise_type": Key("str", "niid", "training noise: niid (the reference), iid, or mix (both)",
                          choices=NOISE_TYPES),
        "iid_fraction": Key("float", 0.5, "share of i.i.d. noise maps when noise_type is mix",
                            minimum=0, maximum=1),
        "val_dir": Key("dir", "../shared/testsets/CBSD68", "validation images (fixed noise)"),
        "val_max_images": Key("int", 0, "use only the first N validation images (0: all)", minimum=0),
        "var_window": Key("int", 7, "p: alpha0 = p^2 / 2 of the inverse-gamma prior", minimum=2),
        "eps2": Key("float", 1e-6, "variance eps^2 of q(z) and of its prior", minimum=0),
        "clip_grad_R": Key("float", 1e3, "max gradient L2 norm of the R-Net", minimum=0),
        "clip_grad_S": Key("float", 1e2, "max gradient L2 norm of the S-Net", minimum=0),
        **{k: Key("dir", None, "reference config key: a clean-image folder added to train_dirs")
           for k in LEGACY_DATA_KEYS},
        "net_type": Key("str", "AttResUNet", "reference config key, unused", choices=("AttResUNet",)),
        "port": Key("int", 0, "reference config key, unused (torchrun chooses the port)"),
    }

    def build_model(self):
        return build_denoiser("denoising-syn", self.cfg)

    def build_train_set(self, length):
        cfg = self.cfg
        folders = list(cfg.train_dirs) + [cfg[k] for k in LEGACY_DATA_KEYS if cfg[k] is not None]
        if not folders:
            raise ConfigError("config key 'train_dirs': no training image folder given")
        paths = sorted({str(p) for folder in folders for p in list_images(folder)})
        if not paths:
            raise ConfigError(f"config key 'train_dirs': no images in {', '.join(map(str, folders))}")
        return SyntheticDenoisingTrain(paths, length, cfg.patch_size, seed=cfg.seed, noise_type=cfg.noise_type,
                                       iid_fraction=cfg.iid_fraction)

    def build_val_sets(self):
        paths = list_images(self.cfg.val_dir)
        if self.cfg.val_max_images:
            paths = paths[:self.cfg.val_max_images]
        if not paths:
            raise ConfigError(f"config key 'val_dir': no images in {self.cfg.val_dir}")
        return [ValSet("cbsd68", SyntheticDenoisingVal(paths), batch_size=1)]

    def train_step(self, model, batch, ctx):
        noisy, clean, variance = batch
        return denoising_train_step(model, noisy, clean, variance, self.cfg.var_window, self.cfg.eps2, ctx,
                                    prior_name="sigma_gt")

    def val_step(self, model, batch, ctx):
        return denoising_val_step(model, batch, ctx)


if __name__ == "__main__":
    sys.exit(main(DenoisingSyn))
