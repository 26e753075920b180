"""Negative ELBO of VIRNet for denoising and blind super-resolution (the symbols: docs/glossary.md).

Every term is a mean over all elements. Variances (eps2, sigma maps, kernel variances) are on
the [0, 1] intensity scale.

Numerical robustness: the inverse-gamma KL is alpha (r - 1 - log r) with r = beta_p / beta_q,
a small difference of large terms when r is close to 1, and the likelihoods add terms of
opposite sign; in float32 their last digits would depend on the CPU's vector kernels. Each
elementwise part and its mean are therefore evaluated in float64 (``_wide``) from the float32
inputs, the KL in the cancellation-free form alpha ((r - 1) - log1p(r - 1)) with r - 1 formed
as (beta_p - beta_q) / beta_q, and only the scalar result is rounded back to the input dtype.
Gradients flow through the float64 graph and reach the inputs in their own dtype.
"""
from math import log, pi, sqrt
from typing import NamedTuple, Sequence, Union

import torch

from utils.degradation import blur_downsample, cov_to_kernel

HALF_LOG_2PI = 0.5 * log(2 * pi)
Number = Union[float, torch.Tensor]


class DenoisingELBO(NamedTuple):
    loss: torch.Tensor
    lh: torch.Tensor
    kl_gauss: torch.Tensor
    kl_invgamma: torch.Tensor


class KernelKL(NamedTuple):
    kl_knet: torch.Tensor
    kl_knet0: torch.Tensor
    kl_knet1: torch.Tensor
    kl_knet2: torch.Tensor


class SISRELBO(NamedTuple):
    loss: torch.Tensor
    lh: torch.Tensor
    kl_rnet: torch.Tensor
    kl_snet: torch.Tensor
    kl_knet: torch.Tensor
    kl_knet0: torch.Tensor
    kl_knet1: torch.Tensor
    kl_knet2: torch.Tensor
    kernel: torch.Tensor


def _wide(x: Number) -> Number:
    """A tensor (or a 0-d tensor `alpha`) as float64 for the elementwise loss arithmetic; a tensor
    on Apple's MPS, which has no float64, is evaluated on the CPU (each term returns to the
    device and dtype of its input; gradients flow back alike)."""
    if not isinstance(x, torch.Tensor):
        return x
    return x.to("cpu", torch.float64) if x.device.type == "mps" else x.double()


def kl_gauss(mu: torch.Tensor, target: torch.Tensor, var: Number) -> torch.Tensor:
    """KL between Gaussians of equal variance `var`: 0.5 * mean((mu - target)^2 / var).
    mu, target: any equal (broadcastable) shapes; returns a scalar of mu's dtype."""
    return (0.5 * ((_wide(mu) - _wide(target)) ** 2 / _wide(var)).mean()).to(mu.device, mu.dtype)


def kl_invgamma(beta_q: torch.Tensor, alpha_p: Number, beta_p: torch.Tensor) -> torch.Tensor:
    """KL(IG(alpha_p, beta_q) || IG(alpha_p, beta_p)), posterior and prior sharing the shape:
    mean(alpha_p (beta_p / beta_q - 1) + alpha_p (log beta_q - log beta_p)), evaluated without
    cancellation as mean(alpha_p (d - log1p(d))), d = (beta_p - beta_q) / beta_q, in float64.
    beta_q, beta_p: positive, broadcastable; returns a scalar of beta_q's dtype."""
    beta_q64 = _wide(beta_q)
    d = (_wide(beta_p) - beta_q64) / beta_q64
    return (_wide(alpha_p) * (d - torch.log1p(d))).mean().to(beta_q.device, beta_q.dtype)


def _digamma(alpha: Number, like: torch.Tensor) -> torch.Tensor:
    return torch.special.digamma(torch.as_tensor(alpha, dtype=like.dtype, device=like.device))


def _log_lh_terms(beta: torch.Tensor, alpha: Number, residual2: torch.Tensor) -> torch.Tensor:
    """Elementwise 0.5 (log beta - digamma(alpha) + alpha / beta * residual2) in float64."""
    beta64 = _wide(beta)
    return 0.5 * (beta64.log() - _digamma(_wide(alpha), beta64) + _wide(alpha) / beta64 * _wide(residual2))


def likelihood(x: torch.Tensor, mu: torch.Tensor, eps2: Number, alpha: Number,
               beta: torch.Tensor) -> torch.Tensor:
    """Expected negative Gaussian log-likelihood of x under z ~ N(mu, eps2), noise variance
    ~ IG(alpha, beta): mean(0.5 (log beta - digamma(alpha) + alpha / beta ((x - mu)^2 + eps2))) + 0.5 log 2 pi.
    x, mu: N x C x H x W; beta broadcastable to them; returns a scalar of mu's dtype."""
    residual2 = (_wide(x) - _wide(mu)) ** 2 + eps2
    return (_log_lh_terms(beta, alpha, residual2).mean() + HALF_LOG_2PI).to(mu.device, mu.dtype)


def _average_over(mu, fn):
    """fn averaged over a list of R-Net outputs (or applied to a single tensor)."""
    if isinstance(mu, (list, tuple)):
        return sum(fn(m) for m in mu) / len(mu)
    return fn(mu)


def elbo_denoising(mu, sigma_est: torch.Tensor, im_noisy: torch.Tensor, im_gt: torch.Tensor,
                   eps2: Number, alpha0: Number, beta0: torch.Tensor) -> DenoisingELBO:
    """Negative ELBO for denoising.

    mu: N x C x H x W R-Net output (or a list of them, averaged); sigma_est: S-Net variance map
    N x c x H x W (c = 1 or C, broadcast); im_noisy, im_gt: N x C x H x W in [0, 1];
    eps2: variance of q(z); alpha0 = var_window^2 / 2; beta0 = alpha0 * sigma_prior.
    Returns (loss, lh, kl_gauss, kl_invgamma), loss = lh + kl_gauss + kl_invgamma.
    """
    beta = alpha0 * _wide(sigma_est)
    kl_z = _average_over(mu, lambda m: kl_gauss(m, im_gt, eps2))
    kl_sigma = kl_invgamma(beta, alpha0 - 1, beta0).to(sigma_est.device, sigma_est.dtype)
    lh = _average_over(mu, lambda m: likelihood(im_noisy, m, eps2, alpha0 - 1, beta))
    return DenoisingELBO(lh + kl_z + kl_sigma, lh, kl_z, kl_sigma)


def kl_kernel(kinfo_est: torch.Tensor, kinfo_gt: torch.Tensor, kappa0: Number, r2: float,
              penalty_K: Sequence[float]) -> KernelKL:
    """KL terms of the kernel posterior. kinfo_est, kinfo_gt: N x 3 (var1, var2, rho).

    kl_knet0/1: inverse-gamma KL on each variance (shape kappa0 - 1, scale kappa0 * var);
    kl_knet2: Gaussian KL on rho with variance r2, times penalty_K[0];
    kl_knet = (k0 + k1 + k2) / 3 * penalty_K[1].
    """
    est, gt = _wide(kinfo_est), _wide(kinfo_gt)
    k0, k1 = (kl_invgamma(kappa0 * est[:, j], kappa0 - 1, kappa0 * gt[:, j]).to(kinfo_est.device, kinfo_est.dtype)
              for j in (0, 1))
    k2 = kl_gauss(kinfo_est[:, 2], kinfo_gt[:, 2], r2) * penalty_K[0]
    return KernelKL((k0 + k1 + k2) / 3 * penalty_K[1], k0, k1, k2)


def sample_kernel_params(kinfo_est: torch.Tensor, kappa0: Number, r2: float) -> torch.Tensor:
    """Reparameterised draw from the kernel posterior. kinfo_est N x 3 -> N x 3 samples:
    var_i ~ 1 / Gamma(kappa0 - 1, rate kappa0 * var_i_est), rho ~ N(rho_est, r2) (not clamped)."""
    concentration = torch.full_like(kinfo_est[:, :2], float(kappa0) - 1)
    variances = 1 / torch.distributions.Gamma(concentration, kappa0 * kinfo_est[:, :2]).rsample()
    rho = kinfo_est[:, 2:] + sqrt(r2) * torch.randn_like(kinfo_est[:, 2:])
    return torch.cat([variances, rho], dim=1)


def sampled_cov(params: torch.Tensor) -> torch.Tensor:
    """Covariance N x 1 x 2 x 2 from sampled (var1, var2, rho), rho clamped to [-1, 1]; the
    cross term uses detached square roots of the variances, as the reference."""
    var1, var2, rho = params[:, 0], params[:, 1], params[:, 2]
    cross = var1.detach().sqrt() * var2.detach().sqrt() * rho.clamp(-1, 1)
    return torch.stack([var1, cross, cross, var2], dim=1).view(-1, 1, 2, 2)


def likelihood_sisr(im_lr: torch.Tensor, kernel: torch.Tensor, sf: int, mu: torch.Tensor,
                    eps2: float, alpha: Number, beta: torch.Tensor, downsampler: str) -> torch.Tensor:
    """Monte-Carlo likelihood of the LR image: z = mu + sqrt(eps2) * randn, then
    0.5 log 2pi + mean(0.5 (log beta - digamma(alpha)) + 0.5 alpha / beta (y - blur_down(z))^2)."""
    z = mu + torch.randn_like(mu) * sqrt(eps2)
    residual2 = (_wide(im_lr) - _wide(blur_downsample(z, kernel, sf, downsampler))) ** 2
    return (_log_lh_terms(beta, alpha, residual2).mean() + HALF_LOG_2PI).to(mu.device, mu.dtype)


def elbo_sisr(mu, sigma_est: torch.Tensor, kinfo_est: torch.Tensor, im_hr: torch.Tensor,
              im_lr: torch.Tensor, sigma_prior: torch.Tensor, alpha0: Number,
              kinfo_gt: torch.Tensor, kappa0: Number, r2: float, eps2: float, sf: int,
              k_size: int = 21, penalty_K: Sequence[float] = (0.02, 2.0), shift: bool = False,
              downsampler: str = "bicubic", kernel_grid: str = "ij") -> SISRELBO:
    """Negative ELBO for blind SR (stochastic: one kernel and one image sample per call).

    mu N x C x sH x sW (or a list); sigma_est N x 1 x 1 x 1 (or a map); kinfo_est, kinfo_gt N x 3;
    im_hr N x C x sH x sW, im_lr N x C x H x W in [0, 1]; sigma_prior the prior noise variance
    (broadcastable to sigma_est). kernel_grid 'ij' rebuilds the sampled kernel as the reference's
    loss does (the transpose of the data kernel for anisotropic kernels); 'xy' uses the data's
    orientation. Returns SISRELBO(loss, lh, kl_rnet, kl_snet, kl_knet, kl_knet0, kl_knet1,
    kl_knet2, kernel N x 1 x k x k).
    """
    kl_rnet = _average_over(mu, lambda m: kl_gauss(m, im_hr, eps2))
    beta = alpha0 * _wide(sigma_est)
    kl_snet = kl_invgamma(beta, alpha0 - 1, alpha0 * _wide(sigma_prior)).to(sigma_est.device, sigma_est.dtype)
    kl_k = kl_kernel(kinfo_est, kinfo_gt, kappa0, r2, penalty_K)
    cov = sampled_cov(sample_kernel_params(kinfo_est, kappa0, r2))
    kernel = cov_to_kernel(cov, k_size, sf, shift, grid=kernel_grid)
    lh = _average_over(mu, lambda m: likelihood_sisr(im_lr, kernel, sf, m, eps2, alpha0 - 1, beta, downsampler))
    loss = lh + kl_rnet + kl_snet + kl_k.kl_knet
    return SISRELBO(loss, lh, kl_rnet, kl_snet, kl_k.kl_knet, kl_k.kl_knet0, kl_k.kl_knet1,
                    kl_k.kl_knet2, kernel)
