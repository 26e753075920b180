#!/usr/bin/env python
"""Train VIRNet for blind super-resolution (x2, x3 or x4).

    python train_sisr.py --config configs/sisr_x4.json --save_dir runs/sisr_x4
    torchrun --nproc_per_node=4 train_sisr.py --config configs/sisr_x4.json --save_dir runs/sisr_x4
    python train_sisr.py --config configs/sisr_x4_small.json --device cpu      # CPU, minutes
    python train_sisr.py --save_dir runs/sisr_x4 --resume auto

HR crops come from the config's image folders (patches of ``datasets.prepare_sisr_patches``); each
sample gets a random anisotropic Gaussian kernel (its kinfo is the K-Net's target), blur, bicubic or
direct down-sampling and Gaussian noise, or noise plus JPEG with ``add_jpeg`` (``datasets.sisr``).
The loss is the SISR ELBO with its kernel KL (``loss.elbo_sisr``); the R-, S- and K-Nets are clipped
separately. Validation: Set14 with the fixed isotropic kernel, PSNR / SSIM on Y with border sf^2.
Everything else (DDP, checkpoints, logs) is ``utils.engine``.

Two slips of the reference's training are reproduced by default (SPEC section 7), each with a
switch that corrects it: ``kernel_grid: "ij"`` (the loss rebuilds the kernel transposed; "xy" uses
the data's orientation) and ``prior_uses_variance: false`` (the Gaussian-noise prior gets the noise
std where the variance is meant; true squares it).

Launchers: ``torchrun`` (recommended); ``python -m torch.distributed.launch`` (deprecated, passes
``--local-rank``, accepted); the reference-style ``--gpu_id 0123`` sets CUDA_VISIBLE_DEVICES before
CUDA starts and, with several GPUs, starts torchrun itself (a note shows the torchrun command).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from datasets.sisr import SISRTrain, SISRValidation
from loss import elbo_sisr
from networks import build_model
from utils.config import ConfigError, Key
from utils.degradation import kinfo_to_kernel, noise_prior
from utils.engine import StepOutput, Task, ValOutput, ValSet, main
from utils.image_io import ImageReadError
from utils.metrics import batch_psnr, batch_ssim

PROG = "train_sisr.py"
KERNEL_ZOOM = 4
"""Kernel pictures in TensorBoard are enlarged this many times (nearest) to be visible."""


class SISRSamples(SISRTrain):
    """``SISRTrain`` whose data problems (an image smaller than hr_size) are config errors, so that
    the engine reports them as one line instead of a traceback."""

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except ImageReadError:
            raise
        except ValueError as err:
            raise ConfigError(f"config key 'train_dirs': {err}") from None


class SISR(Task):
    """Blind SR: VIRAttResUNetSR (S-Net, K-Net, R-Net) and the SISR ELBO."""

    name = "sisr"
    description = ("Train VIRNet for blind super-resolution on HR images with random kernels and noise.\n\n"
                   "launcher flags: --gpu_id IDS (e.g. 0123: sets CUDA_VISIBLE_DEVICES; several GPUs start "
                   "torchrun),\n--local-rank N / --local_rank N (passed by python -m torch.distributed.launch)")
    default_config = "configs/sisr_x4.json"
    keys = {
        "sf": Key("int", 4, "scale factor", choices=(2, 3, 4)),
        "im_chn": Key("int", 3, "image channels (RGB only)", choices=(3,)),
        "sigma_chn": Key("int", 1, "channels of the S-Net variance estimate", choices=(1, 3)),
        "hr_size": Key("int", 192, "side of the HR training crop (LR side: ceil(hr_size / sf))", minimum=8),
        "dep_S": Key("int", 5, "S-Net (DnCNN) depth", minimum=2),
        "dep_K": Key("int", 8, "K-Net residual blocks", minimum=1),
        "n_feat": Key("ints", [96, 160, 224], "R-Net (U-Net) widths per scale", minimum=1),
        "n_resblocks": Key("int", 2, "residual blocks per U-Net scale", minimum=1),
        "extra_mode": Key("str", "Both", "where the kernel / noise maps enter the R-Net",
                          choices=("Null", "Input", "Down", "Both")),
        "noise_cond": Key("bool", True, "feed sqrt(variance) from the S-Net to the R-Net"),
        "kernel_cond": Key("bool", True, "feed kinfo from the K-Net to the R-Net"),
        "train_dirs": Key("dirs", [], "folders of HR training images or patches (all images in each)"),
        "val_dir": Key("dir", "../shared/testsets/Set14", "validation HR images (fixed kernel and noise)"),
        "val_max_images": Key("int", 0, "use only the first N validation images (0: all)", minimum=0),
        "k_size": Key("int", 21, "kernel side", minimum=3),
        "kernel_shift": Key("bool", False, "shift the kernel centre by 0.5 (sf - k_size % 2)"),
        "downsampler": Key("str", "bicubic", "bicubic (MATLAB imresize) or direct (every sf-th pixel)",
                           choices=("bicubic", "direct")),
        "noise_level": Key("floats", [0.01, 15], "range of the Gaussian noise std, 0-255 scale", minimum=0),
        "noise_jpeg": Key("floats", [0.01, 10], "range of the noise std before JPEG, 0-255 scale", minimum=0),
        "add_jpeg": Key("bool", False, "half of the samples get noise + JPEG; the S-Net then gives a "
                        "variance map (noise_avg = not add_jpeg) and the prior is the windowed estimate"),
        "var_window": Key("int", 9, "p: alpha0 = p^2 / 2; also the window of the JPEG-case prior", minimum=2),
        "eps2": Key("float", 1e-5, "variance eps^2 of q(z) and of its prior", minimum=0),
        "r2": Key("float", 1e-4, "variance of the posterior and prior of rho", minimum=0),
        "kappa0": Key("float", 50, "inverse-gamma concentration of the kernel variances", minimum=1),
        "penalty_K": Key("floats", [0.02, 2], "[weight of the rho KL, weight of the kernel KL]", minimum=0),
        "clip_grad_R": Key("float", 5e2, "max gradient L2 norm of the R-Net", minimum=0),
        "clip_grad_S": Key("float", 1e2, "max gradient L2 norm of the S-Net", minimum=0),
        "clip_grad_K": Key("float", 5e2, "max gradient L2 norm of the K-Net", minimum=0),
        "kernel_grid": Key("str", "ij", "grid on which the loss rebuilds the sampled kernel: 'ij' as the "
                           "reference (transposed for anisotropic kernels), 'xy' the data's orientation",
                           choices=("ij", "xy")),
        "prior_uses_variance": Key("bool", False, "Gaussian-noise prior: false passes the noise std as "
                                   "the reference does, true its square (the variance)"),
        "image_freq": Key("int", 2000, "iterations between TensorBoard training images (0: never)", minimum=0),
        "train_hr_patchs": Key("dir", None, "reference config key: an HR folder added to train_dirs"),
        "val_hr_path": Key("dir", None, "reference config key: replaces val_dir when set"),
    }

    # ---- model and data

    def build_model(self):
        cfg = self.cfg
        return build_model("sisr", im_chn=cfg.im_chn, sigma_chn=cfg.sigma_chn, n_feat=cfg.n_feat,
                           dep_S=cfg.dep_S, dep_K=cfg.dep_K, n_resblocks=cfg.n_resblocks,
                           noise_cond=cfg.noise_cond, kernel_cond=cfg.kernel_cond,
                           extra_mode=cfg.extra_mode, noise_avg=not cfg.add_jpeg)

    def build_train_set(self, length):
        cfg = self.cfg
        folders = list(cfg.train_dirs) + ([cfg.train_hr_patchs] if cfg.train_hr_patchs else [])
        if not folders:
            raise ConfigError("config key 'train_dirs': no training image folder given")
        try:
            return SISRSamples(folders, length, cfg.hr_size, cfg.sf, k_size=cfg.k_size,
                               kernel_shift=cfg.kernel_shift, downsampler=cfg.downsampler,
                               noise_level=cfg.noise_level, noise_jpeg=cfg.noise_jpeg,
                               add_jpeg=cfg.add_jpeg, seed=cfg.seed)
        except ValueError as err:
            raise ConfigError(f"config key 'train_dirs': {err}") from None

    def build_val_sets(self):
        cfg = self.cfg
        folder = cfg.val_hr_path or cfg.val_dir
        sets = []
        for noise in ("gaussian", "jpeg") if cfg.add_jpeg else ("gaussian",):
            try:
                data = SISRValidation(folder, cfg.sf, k_size=cfg.k_size, downsampler=cfg.downsampler,
                                      noise=noise, kernel_shift=cfg.kernel_shift)
            except ValueError as err:
                raise ConfigError(f"config key 'val_dir': {err}") from None
            if cfg.val_max_images:
                data = Subset(data, range(min(cfg.val_max_images, len(data))))
            name = Path(folder).name.lower() + ("" if noise == "gaussian" else "_jpeg")
            sets.append(ValSet(name, data, batch_size=1))
        return sets

    # ---- steps

    def sigma_prior(self, im_lr: torch.Tensor, im_blur: torch.Tensor, nlevel: torch.Tensor) -> torch.Tensor:
        """Prior noise variance of the S-Net's KL: with add_jpeg the windowed estimate from
        (im_lr - im_blur)^2 (N x 3 x h x w); else the sample's noise std nlevel (N x 1 x 1 x 1, [0, 1]
        scale) as the reference passes it, or its square with ``prior_uses_variance``."""
        if self.cfg.add_jpeg:
            return noise_prior(im_lr, im_blur, self.cfg.var_window)
        return nlevel ** 2 if self.cfg.prior_uses_variance else nlevel

    def kernel_pictures(self, kinfo: torch.Tensor) -> torch.Tensor:
        """Kernels of kinfo (N x 3) in the data's orientation ('xy' grid), enlarged for display:
        N x 1 x (k_size * KERNEL_ZOOM) x (k_size * KERNEL_ZOOM)."""
        cfg = self.cfg
        kernels = kinfo_to_kernel(kinfo.detach().float(), cfg.k_size, cfg.sf, cfg.kernel_shift, grid="xy")
        return F.interpolate(kernels, scale_factor=KERNEL_ZOOM, mode="nearest")

    def train_step(self, model, batch, ctx):
        cfg = self.cfg
        im_hr, im_lr, im_blur, kinfo_gt, nlevel = batch
        with ctx.autocast():
            mu, kinfo_est, sigma_est = model(im_lr, cfg.sf)
        elbo = elbo_sisr(mu.float(), sigma_est.float(), kinfo_est.float(), im_hr, im_lr,
                         self.sigma_prior(im_lr, im_blur, nlevel), 0.5 * cfg.var_window ** 2, kinfo_gt,
                         cfg.kappa0, cfg.r2, cfg.eps2, cfg.sf, k_size=cfg.k_size, penalty_K=cfg.penalty_K,
                         shift=cfg.kernel_shift, downsampler=cfg.downsampler, kernel_grid=cfg.kernel_grid)

        def visuals():
            return {"lr": im_lr, "restored": mu.detach().float().clamp(0, 1), "hr": im_hr,
                    "kernel_gt": self.kernel_pictures(kinfo_gt), "kernel_est": self.kernel_pictures(kinfo_est),
                    # the kernel the loss blurred with (one posterior draw, on the kernel_grid grid)
                    "kernel_loss_sample": F.interpolate(elbo.kernel.detach().float(), scale_factor=KERNEL_ZOOM,
                                                        mode="nearest")}

        terms = {"lh": elbo.lh, "kl_rnet": elbo.kl_rnet, "kl_snet": elbo.kl_snet, "kl_knet": elbo.kl_knet,
                 "kl_knet0": elbo.kl_knet0, "kl_knet1": elbo.kl_knet1, "kl_knet2": elbo.kl_knet2}
        return StepOutput(elbo.loss, terms, visuals)

    def val_step(self, model, batch, ctx):
        sf = self.cfg.sf
        im_hr, im_lr, kinfo_gt = batch
        with ctx.autocast():
            mu, kinfo_est, _ = model(im_lr, sf)
        mu = mu.float()
        # no clamp before the Y conversion, as the reference (the conversion clamps to [0, 1])
        metrics = {"psnr": batch_psnr(mu, im_hr, border=sf ** 2, ycbcr=True),
                   "ssim": batch_ssim(mu, im_hr, border=sf ** 2, ycbcr=True)}

        def visuals():
            return {"lr": im_lr, "restored": mu.clamp(0, 1), "hr": im_hr,
                    "kernel_gt": self.kernel_pictures(kinfo_gt), "kernel_est": self.kernel_pictures(kinfo_est)}

        return ValOutput(metrics, visuals)


# --------------------------------------------------------------------------- launcher flags


def gpu_ids(text: str) -> list[str]:
    """GPU ids of ``--gpu_id``: '0123' (one digit per GPU, the reference's style) or '0,1,2,3'.
    Raises ConfigError for anything else or a repeated id."""
    parts = [p.strip() for p in text.split(",")] if "," in text else list(text.strip())
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"--gpu_id: expected GPU numbers such as 0123 or 0,1,2,3, got {text!r}")
    return parts


def torchrun_command(n_procs: int, argv: Sequence[str]) -> list[str]:
    """The torchrun command (as ``python -m torch.distributed.run``) that runs this script with
    ``argv`` on ``n_procs`` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_procs}",
            str(Path(__file__).resolve()), *argv]


def apply_launcher_flags(argv: Sequence[str]) -> list[str]:
    """Handle the launcher flags before anything starts CUDA; returns the remaining arguments.

    ``--local-rank N`` / ``--local_rank N`` (from ``torch.distributed.launch``) set LOCAL_RANK
    when the launcher did not. ``--gpu_id IDS`` sets CUDA_VISIBLE_DEVICES; with several ids and
    no launcher around this process, it is replaced by torchrun with one process per GPU (a note
    recommends running torchrun directly). Raises ConfigError when the GPUs are not there.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None)
    parser.add_argument("--gpu_id", default=None)
    flags, rest = parser.parse_known_args(argv)
    if flags.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(flags.local_rank))
    if flags.gpu_id is None:
        return rest
    ids = gpu_ids(flags.gpu_id)
    visible = ",".join(ids)
    os.environ["CUDA_VISIBLE_DEVICES"] = visible
    found = torch.cuda.device_count()
    if not found:
        raise ConfigError(f"--gpu_id {flags.gpu_id}: no CUDA device is available; drop --gpu_id to train "
                          f"on the CPU")
    if found != len(ids):
        raise ConfigError(f"--gpu_id {flags.gpu_id}: only {found} of the GPUs {visible} exist")
    if len(ids) == 1 or "WORLD_SIZE" in os.environ:
        print(f"note: --gpu_id sets CUDA_VISIBLE_DEVICES={visible}; the recommended launcher is torchrun "
              f"(CUDA_VISIBLE_DEVICES=... torchrun --nproc_per_node=N {PROG} ...)", file=sys.stderr)
        return rest
    command = torchrun_command(len(ids), rest)
    print(f"note: --gpu_id {flags.gpu_id}: starting {len(ids)} processes with torchrun; next time run it "
          f"directly: CUDA_VISIBLE_DEVICES={visible} torchrun --nproc_per_node={len(ids)} {PROG} "
          f"{shlex.join(rest)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)
    return rest  # not reached: execv replaces this process


def run(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: the launcher flags, then ``engine.main``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        rest = apply_launcher_flags(argv)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return main(SISR, rest, prog=PROG)


if __name__ == "__main__":
    sys.exit(run())
