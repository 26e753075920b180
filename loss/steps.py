"""The trainers' training and validation steps: forward pass, negative ELBO, metrics and the
TensorBoard pictures, for denoising (synthetic and real noise) and blind SR.

Each step returns the training engine's ``StepOutput`` / ``ValOutput`` (``utils.training``); the
forward pass runs under the context's autocast, the loss in float32.
"""
import torch
import torch.nn.functional as F
from torch import nn

from utils.config import Config
from utils.degradation import kinfo_to_kernel, noise_prior
from utils.metrics import batch_psnr, batch_ssim
from utils.training import StepContext, StepOutput, ValOutput

from .elbo import elbo_denoising, elbo_sisr

KERNEL_ZOOM = 4
"""Kernel pictures in TensorBoard are enlarged this many times (nearest) to be visible."""


def denoising_train_step(model: nn.Module, noisy: torch.Tensor, clean: torch.Tensor,
                         prior: torch.Tensor, var_window: int, eps2: float, ctx: StepContext,
                         prior_name: str = "sigma_prior") -> StepOutput:
    """One step of the denoising ELBO.

    noisy, clean: N x 3 x H x W; prior: the prior noise variance, N x c x H x W (c = 1 or 3);
    alpha0 = var_window^2 / 2 and beta0 = alpha0 * prior. TensorBoard visuals: noisy, restored
    (clamped to [0, 1]), clean, the estimated variance and the prior (under `prior_name`).
    """
    with ctx.autocast():
        mu, sigma = model(noisy)
    alpha0 = 0.5 * var_window ** 2
    elbo = elbo_denoising(mu.float(), sigma.float(), noisy, clean, eps2, alpha0, alpha0 * prior)

    def visuals():
        return {"noisy": noisy, "restored": mu.detach().clamp(0, 1), "clean": clean,
                "sigma_est": sigma.detach(), prior_name: prior}

    terms = {"lh": elbo.lh, "kl_gauss": elbo.kl_gauss, "kl_invgamma": elbo.kl_invgamma}
    return StepOutput(elbo.loss, terms, visuals)


def denoising_val_step(model: nn.Module, batch, ctx: StepContext) -> ValOutput:
    """Validation of a denoiser on a (noisy, clean) batch: PSNR and SSIM (RGB, border 0) of the
    clamped restoration, averaged over the batch."""
    noisy, clean = batch
    with ctx.autocast():
        mu, sigma = model(noisy)
    restored = mu.float().clamp(0, 1)
    metrics = {"psnr": batch_psnr(restored, clean), "ssim": batch_ssim(restored, clean)}

    def visuals():
        return {"noisy": noisy, "restored": restored, "clean": clean, "sigma_est": sigma.float()}

    return ValOutput(metrics, visuals)


def kernel_pictures(kinfo: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Kernels of kinfo (N x 3) in the data's orientation ('xy' grid), enlarged for display:
    N x 1 x (k_size * KERNEL_ZOOM) x (k_size * KERNEL_ZOOM); ``cfg``: k_size, sf, kernel_shift."""
    kernels = kinfo_to_kernel(kinfo.detach().float(), cfg.k_size, cfg.sf, cfg.kernel_shift, grid="xy")
    return F.interpolate(kernels, scale_factor=KERNEL_ZOOM, mode="nearest")


def sisr_sigma_prior(im_lr: torch.Tensor, im_blur: torch.Tensor, nlevel: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Prior noise variance of the S-Net's KL: with ``cfg.add_jpeg`` the windowed estimate from
    (im_lr - im_blur)^2 (N x 3 x h x w); else the sample's noise std nlevel (N x 1 x 1 x 1, [0, 1]
    scale) as the reference passes it, or its square with ``cfg.prior_uses_variance``."""
    if cfg.add_jpeg:
        return noise_prior(im_lr, im_blur, cfg.var_window)
    return nlevel ** 2 if cfg.prior_uses_variance else nlevel


def sisr_train_step(model: nn.Module, batch, cfg: Config, ctx: StepContext) -> StepOutput:
    """One step of the SR ELBO (``elbo_sisr``) on a batch (im_hr, im_lr, im_blur, kinfo_gt, nlevel).

    The S-Net's prior noise variance is ``sisr_sigma_prior``; ``cfg``: sf, var_window, kappa0, r2,
    eps2, k_size, penalty_K, kernel_shift, downsampler, kernel_grid, add_jpeg, prior_uses_variance.
    Visuals: LR, restored, HR, the true and estimated kernels, and the kernel the loss blurred with
    (one posterior draw).
    """
    im_hr, im_lr, im_blur, kinfo_gt, nlevel = batch
    sigma_prior = sisr_sigma_prior(im_lr, im_blur, nlevel, cfg)
    with ctx.autocast():
        mu, kinfo_est, sigma_est = model(im_lr, cfg.sf)
    elbo = elbo_sisr(mu.float(), sigma_est.float(), kinfo_est.float(), im_hr, im_lr, sigma_prior,
                     0.5 * cfg.var_window ** 2, kinfo_gt, cfg.kappa0, cfg.r2, cfg.eps2, cfg.sf, k_size=cfg.k_size,
                     penalty_K=cfg.penalty_K, shift=cfg.kernel_shift, downsampler=cfg.downsampler,
                     kernel_grid=cfg.kernel_grid)

    def visuals():
        return {"lr": im_lr, "restored": mu.detach().float().clamp(0, 1), "hr": im_hr,
                "kernel_gt": kernel_pictures(kinfo_gt, cfg), "kernel_est": kernel_pictures(kinfo_est, cfg),
                "kernel_loss_sample": F.interpolate(elbo.kernel.detach().float(), scale_factor=KERNEL_ZOOM,
                                                    mode="nearest")}

    terms = {"lh": elbo.lh, "kl_rnet": elbo.kl_rnet, "kl_snet": elbo.kl_snet, "kl_knet": elbo.kl_knet,
             "kl_knet0": elbo.kl_knet0, "kl_knet1": elbo.kl_knet1, "kl_knet2": elbo.kl_knet2}
    return StepOutput(elbo.loss, terms, visuals)


def sisr_val_step(model: nn.Module, batch, cfg: Config, ctx: StepContext) -> ValOutput:
    """Validation of an SR model on a batch (im_hr, im_lr, kinfo_gt): PSNR and SSIM on Y with border
    sf^2, no clamp before the Y conversion (as the reference; the conversion clamps to [0, 1])."""
    sf = cfg.sf
    im_hr, im_lr, kinfo_gt = batch
    with ctx.autocast():
        mu, kinfo_est, _ = model(im_lr, sf)
    mu = mu.float()
    metrics = {"psnr": batch_psnr(mu, im_hr, border=sf ** 2, ycbcr=True),
               "ssim": batch_ssim(mu, im_hr, border=sf ** 2, ycbcr=True)}

    def visuals():
        return {"lr": im_lr, "restored": mu.clamp(0, 1), "hr": im_hr,
                "kernel_gt": kernel_pictures(kinfo_gt, cfg), "kernel_est": kernel_pictures(kinfo_est, cfg)}

    return ValOutput(metrics, visuals)
