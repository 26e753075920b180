"""Losses against the reference fixtures, and the stochastic SR likelihood's behaviour."""
import json

import numpy as np
import pytest
import torch

from loss import elbo_denoising, elbo_sisr, kl_kernel, sample_kernel_params, sampled_cov
from utils.degradation import noise_prior


def _ops(shared, name):
    return json.loads((shared / "conformance/ops/ops.json").read_text())[name]


def _rel(a, b):
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


@pytest.mark.parametrize("index", range(3))
def test_elbo_denoising_matches_reference(shared, index):
    case = _ops(shared, "elbo_denoising")[index]
    d = np.load(shared / "conformance/ops" / case["file"])
    t = {k: torch.from_numpy(d[k]) for k in ("mu", "sigma_est", "im_noisy", "im_gt", "sigma_prior")}
    prior = noise_prior(t["im_noisy"], t["im_gt"], case["var_window"])
    assert (prior - t["sigma_prior"]).abs().max() / t["sigma_prior"].abs().max() < 1e-4
    alpha0 = 0.5 * case["var_window"] ** 2
    out = elbo_denoising(t["mu"], t["sigma_est"], t["im_noisy"], t["im_gt"], case["eps2"], alpha0,
                         alpha0 * t["sigma_prior"])
    for name in ("loss", "lh", "kl_gauss", "kl_invgamma"):
        assert _rel(getattr(out, name), d[name]) < 1e-4, name
    assert float(out.loss) == pytest.approx(float(out.lh + out.kl_gauss + out.kl_invgamma), rel=1e-6)


def test_elbo_denoising_list_of_outputs_is_averaged():
    torch.manual_seed(0)
    gt = torch.rand(2, 3, 8, 8)
    noisy = gt + 0.1 * torch.randn_like(gt)
    sigma = torch.full((2, 1, 8, 8), 0.01)
    beta0 = 24.5 * noise_prior(noisy, gt, 7)
    mus = [gt + 0.01 * torch.randn_like(gt) for _ in range(2)]
    both = elbo_denoising(mus, sigma, noisy, gt, 1e-6, 24.5, beta0)
    single = [elbo_denoising(m, sigma, noisy, gt, 1e-6, 24.5, beta0) for m in mus]
    assert float(both.kl_gauss) == pytest.approx((float(single[0].kl_gauss) + float(single[1].kl_gauss)) / 2, rel=1e-6)
    assert float(both.lh) == pytest.approx((float(single[0].lh) + float(single[1].lh)) / 2, rel=1e-6)


@pytest.mark.parametrize("index", range(2))
def test_kl_kernel_matches_reference(shared, index):
    case = _ops(shared, "kl_kernel")[index]
    d = np.load(shared / "conformance/ops" / case["file"])
    out = kl_kernel(torch.from_numpy(d["kinfo_est"]), torch.from_numpy(d["kinfo_gt"]),
                    case["kappa0"], case["r2"], case["penalty_K"])
    for name in ("kl_knet", "kl_knet0", "kl_knet1", "kl_knet2"):
        assert _rel(getattr(out, name), d[name]) < 1e-4, name


def test_kernel_posterior_samples_have_right_moments():
    torch.manual_seed(123)
    kappa0, r2, n = 50.0, 1e-4, 200_000
    kinfo = torch.tensor([[2.0, 0.5, 0.3]]).repeat(n, 1)
    s = sample_kernel_params(kinfo, kappa0, r2).double()
    for i, v in enumerate((2.0, 0.5)):
        # 1 / Gamma(a, rate b): mean b / (a - 1), variance b^2 / ((a - 1)^2 (a - 2)), a = kappa0 - 1.
        a, b = kappa0 - 1, kappa0 * v
        mean, var = b / (a - 1), b ** 2 / ((a - 1) ** 2 * (a - 2))
        assert abs(s[:, i].mean() - mean) < 5 * (var / n) ** 0.5
        assert abs(s[:, i].var() / var - 1) < 0.03
    assert abs(s[:, 2].mean() - 0.3) < 5 * (r2 / n) ** 0.5
    assert abs(s[:, 2].var() / r2 - 1) < 0.02


def test_sampled_cov_clamps_rho_and_detaches_cross_term():
    params = torch.tensor([[4.0, 1.0, 1.5]], requires_grad=True)
    cov = sampled_cov(params)
    assert torch.allclose(cov.detach(), torch.tensor([[[[4.0, 2.0], [2.0, 1.0]]]]))
    cov[0, 0, 0, 1].backward()
    assert params.grad[0, 0] == 0 and params.grad[0, 1] == 0


def _sisr_inputs(seed=0):
    torch.manual_seed(seed)
    sf, n = 2, 2
    im_hr = torch.rand(n, 3, 24, 24)
    mu = (im_hr + 0.05 * torch.randn_like(im_hr)).requires_grad_()
    im_lr = torch.rand(n, 3, 12, 12)
    sigma_est = torch.full((n, 1, 1, 1), 1e-3, requires_grad=True)
    kinfo_est = torch.tensor([[1.5, 2.5, 0.2], [3.0, 1.0, -0.4]], requires_grad=True)
    kinfo_gt = torch.tensor([[2.0, 2.0, 0.0], [2.5, 1.5, -0.3]])
    prior = torch.full((n, 1, 1, 1), 2e-3)
    return dict(mu=mu, sigma_est=sigma_est, kinfo_est=kinfo_est, im_hr=im_hr, im_lr=im_lr,
                sigma_prior=prior, alpha0=40.5, kinfo_gt=kinfo_gt, kappa0=50.0, r2=1e-4, eps2=1e-5,
                sf=sf, k_size=21, penalty_K=[0.02, 2.0], shift=False, downsampler="bicubic")


@pytest.mark.parametrize("downsampler", ["bicubic", "direct"])
def test_elbo_sisr_gradients_reach_every_estimate(downsampler):
    args = _sisr_inputs()
    args["downsampler"] = downsampler
    out = elbo_sisr(**args)
    assert torch.isfinite(out.loss)
    assert out.kernel.shape == (2, 1, 21, 21)
    assert torch.allclose(out.kernel.sum(dim=(-1, -2)), torch.ones(2, 1), atol=1e-5)
    total = out.lh + out.kl_rnet + out.kl_snet + out.kl_knet
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6)
    lh_grads = torch.autograd.grad(out.lh, [args["mu"], args["sigma_est"], args["kinfo_est"]])
    for name, g in zip(("mu", "sigma_est", "kinfo_est"), lh_grads):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    # The likelihood reaches all three kernel parameters through the reparameterised sample.
    assert (lh_grads[2].abs() > 0).all()


def test_elbo_sisr_is_stochastic_but_reproducible():
    args = _sisr_inputs()
    torch.manual_seed(5)
    a = elbo_sisr(**args).lh
    torch.manual_seed(5)
    b = elbo_sisr(**args).lh
    c = elbo_sisr(**args).lh
    assert a.item() == b.item() and a.item() != c.item()
