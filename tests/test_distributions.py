"""The derivations (a), (b), (c) and the log-densities, checked against exact cases, torch.distributions and Monte
Carlo."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from torch.distributions import Categorical, MixtureSameFamily

from vaelab.distributions import (
    bernoulli_log_prob,
    gaussian_log_prob,
    kl_normal_diag_standard,
    log_mean_exp,
    log_normal_diag,
    log_normal_diag_mixture,
    log_standard_normal,
)
from vaelab.kernels.mlp_elbo import batch_negative_elbo

gaussian_kl = kl_normal_diag_standard
bernoulli_log_likelihood = bernoulli_log_prob


pytestmark = pytest.mark.usefixtures("float64_default")


def linear_gaussian(d=3, p=5, sigma=0.7, seed=0):
    """p(z) = N(0, I_d), p(x|z) = N(W z + b, sigma^2 I_p): evidence and posterior in closed form."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(p, d, generator=generator)
    b = torch.randn(p, generator=generator)
    x = torch.randn(p, generator=generator) * 2
    evidence = MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(p)).log_prob(x)
    precision = torch.eye(d) + W.T @ W / sigma**2
    covariance = torch.linalg.inv(precision)
    posterior = MultivariateNormal(covariance @ W.T @ (x - b) / sigma**2, covariance)
    return W, b, x, sigma, evidence, posterior


def gaussian_elbo(W, b, x, sigma, mu, logvar):
    """ELBO = E_q[log p(x|z)] - KL(q || p(z)) for q = N(mu, diag exp(logvar)), in closed form."""
    p = x.shape[0]
    residual = x - W @ mu - b
    expected_log_likelihood = -0.5 * p * math.log(2 * math.pi * sigma**2) - (
        residual @ residual + (W.square() @ logvar.exp()).sum()
    ) / (2 * sigma**2)
    return expected_log_likelihood - gaussian_kl(mu, logvar)


@pytest.mark.parametrize("seed", range(5))
def test_a_evidence_is_elbo_plus_kl_to_the_posterior(seed):
    W, b, x, sigma, evidence, posterior = linear_gaussian(seed=seed)
    generator = torch.Generator().manual_seed(100 + seed)
    mu, logvar = torch.randn(3, generator=generator), torch.randn(3, generator=generator)
    q = MultivariateNormal(mu, torch.diag(logvar.exp()))
    gap = evidence - gaussian_elbo(W, b, x, sigma, mu, logvar)
    assert gap > 0
    torch.testing.assert_close(gap, kl_divergence(q, posterior), rtol=1e-10, atol=1e-10)


def test_a_the_sheets_plus_kl_is_not_a_bound():
    """With +KL(q || p(z)) (the sheet's eq. II) the 'bound' exceeds log p(x) for a narrow q."""
    W, b, x, sigma, evidence, posterior = linear_gaussian()
    mu, logvar = posterior.mean, torch.full((3,), -20.0)
    sheet = gaussian_elbo(W, b, x, sigma, mu, logvar) + 2 * gaussian_kl(mu, logvar)
    assert gaussian_elbo(W, b, x, sigma, mu, logvar) < evidence < sheet


def test_b_closed_form_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(64, 20, generator=generator), torch.randn(64, 20, generator=generator)
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    prior = Independent(Normal(torch.zeros(20), torch.ones(20)), 1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), kl_divergence(q, prior), rtol=1e-12, atol=1e-12)


def test_b_closed_form_kl_matches_monte_carlo():
    generator = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(4, generator=generator), torch.randn(4, generator=generator) * 0.5
    z = mu + (0.5 * logvar).exp() * torch.randn(200_000, 4, generator=generator)
    samples = log_normal_diag(z, mu, logvar) - log_standard_normal(z)  # log q(z) - log p(z)
    standard_error = samples.std() / math.sqrt(samples.numel())
    assert abs(samples.mean() - gaussian_kl(mu, logvar)) < 4 * standard_error


def test_b_kl_is_zero_only_at_the_prior():
    assert gaussian_kl(torch.zeros(5), torch.zeros(5)) == 0
    assert gaussian_kl(torch.full((5,), 1e-3), torch.zeros(5)) > 0


@pytest.mark.parametrize("x", [0.0, 1.0, 0.3])
def test_c_cross_entropy_is_minus_log_bernoulli_pmf(x):
    phi = torch.tensor([1e-6, 0.01, 0.3, 0.5, 0.9, 1 - 1e-6])
    target = torch.full_like(phi, x)
    pmf = phi**target * (1 - phi) ** (1 - target)  # a product over outcomes, not the sheet's sum
    bce = F.binary_cross_entropy(phi, target, reduction="none")
    torch.testing.assert_close(bce, -torch.log(pmf), rtol=1e-10, atol=1e-12)
    # our log-likelihood from logits is the same number, summed over pixels
    torch.testing.assert_close(bernoulli_log_likelihood(torch.logit(phi), target), -bce.sum(), rtol=1e-9, atol=1e-9)


def test_c_logits_path_equals_the_sheets_hint_and_stays_finite():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 784, generator=generator) * 4
    x = torch.rand(8, 784, generator=generator)
    sheet = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(-1)
    torch.testing.assert_close(-bernoulli_log_likelihood(logits, x), sheet, rtol=1e-10, atol=1e-8)
    extreme = torch.tensor([[-200.0, 200.0]])
    assert torch.isfinite(bernoulli_log_likelihood(extreme, torch.tensor([[1.0, 0.0]]))).all()


def test_the_kernel_s_batch_sums_equal_the_per_image_terms():
    generator = torch.Generator().manual_seed(4)
    logits, x = torch.randn(16, 30, generator=generator), torch.rand(16, 30, generator=generator)
    mu, logvar = torch.randn(16, 4, generator=generator), torch.randn(16, 4, generator=generator)
    total_reconstruction, total_kl = batch_negative_elbo(logits, x, mu, logvar)
    torch.testing.assert_close(total_reconstruction, -bernoulli_log_prob(logits, x).sum())
    torch.testing.assert_close(total_kl, gaussian_kl(mu, logvar).sum())


def test_log_normal_diag_matches_torch_distributions():
    generator = torch.Generator().manual_seed(5)
    z, mu, logvar = (torch.randn(7, 6, generator=generator) for _ in range(3))
    expected = Independent(Normal(mu, (0.5 * logvar).exp()), 1).log_prob(z)
    torch.testing.assert_close(log_normal_diag(z, mu, logvar), expected)
    torch.testing.assert_close(log_standard_normal(z), Independent(Normal(0 * z, 1 + 0 * z), 1).log_prob(z))


def test_log_mean_exp_of_equal_weights_is_the_weight_and_rises_with_spread():
    log_w = torch.full((10, 3), -5.0)
    torch.testing.assert_close(log_mean_exp(log_w), torch.full((3,), -5.0))
    spread = torch.tensor([[-5.0], [-1.0]])
    assert log_mean_exp(spread) > spread.mean()  # Jensen: log-mean-exp >= mean
    huge = torch.tensor([[-1e4], [-1e4 + math.log(3.0)]])
    torch.testing.assert_close(log_mean_exp(huge), torch.tensor([-1e4 + math.log(2.0)]))  # no underflow


def test_the_mixture_density_is_torch_s_mixture_of_diagonal_gaussians():
    generator = torch.Generator().manual_seed(7)
    mu, logvar = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    z = torch.randn(4, 6, 3, generator=generator) * 2
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(5)), Independent(Normal(mu, (0.5 * logvar).exp()), 1))
    torch.testing.assert_close(log_normal_diag_mixture(z, mu, logvar), mixture.log_prob(z), rtol=1e-10, atol=1e-10)


def test_gaussian_log_prob_is_torch_s():
    generator = torch.Generator().manual_seed(8)
    mean, x = torch.randn(3, 7, generator=generator), torch.randn(3, 7, generator=generator)
    expected = Independent(Normal(mean, torch.full_like(mean, 0.3)), 1).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(mean, x, 0.3), expected, rtol=1e-12, atol=1e-12)
