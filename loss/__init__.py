"""VIRNet losses: the negative ELBO for denoising and blind SR, and their KL terms."""
from .elbo import (DenoisingELBO, KernelKL, SISRELBO, elbo_denoising, elbo_sisr, kl_gauss,
                   kl_invgamma, kl_kernel, likelihood, sample_kernel_params, sampled_cov)

__all__ = ["DenoisingELBO", "KernelKL", "SISRELBO", "elbo_denoising", "elbo_sisr", "kl_gauss",
           "kl_invgamma", "kl_kernel", "likelihood", "sample_kernel_params", "sampled_cov"]
