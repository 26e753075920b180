"""Training and validation steps shared by the two denoising trainers (synthetic and real)."""
import torch
from torch import nn

from loss import elbo_denoising
from networks import build_model
from utils.engine import StepContext, StepOutput, ValOutput
from utils.metrics import batch_psnr, batch_ssim


def build_denoiser(task: str, cfg) -> nn.Module:
    """The VIRAttResUNet of `task` ('denoising-syn' or 'denoising-real') with the architecture keys
    of a trainer config (im_chn, sigma_chn, n_feat, dep_S, n_resblocks, noise_cond, extra_mode)."""
    return build_model(task, im_chn=cfg.im_chn, sigma_chn=cfg.sigma_chn, n_feat=cfg.n_feat,
                       dep_S=cfg.dep_S, n_resblocks=cfg.n_resblocks, noise_cond=cfg.noise_cond,
                       extra_mode=cfg.extra_mode)


def denoising_train_step(model: nn.Module, noisy: torch.Tensor, clean: torch.Tensor,
                         prior: torch.Tensor, var_window: int, eps2: float, ctx: StepContext,
                         prior_name: str = "sigma_prior") -> StepOutput:
    """One step of the denoising ELBO.

    noisy, clean: N x 3 x H x W; prior: the prior noise variance, N x c x H x W (c = 1 or 3);
    alpha0 = var_window^2 / 2 and beta0 = alpha0 * prior. The forward pass runs under the
    context's autocast, the loss in float32. TensorBoard visuals: noisy, restored (clamped to
    [0, 1]), clean, the estimated variance and the prior (under `prior_name`).
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
