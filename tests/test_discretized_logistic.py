"""The 8-bit likelihoods (discretized logistic and its PixelCNN++ mixture) against float64 references written here:
scipy's logistic CDF in ordinary regimes, mpmath where float64 sigmoid differences underflow."""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import chisquare, logistic

from vaelab.distributions import (
    LOG_SCALE_MIN,
    bits_per_dim,
    discretized_logistic_log_prob,
    discretized_logistic_mean,
    discretized_logistic_mixture_log_prob,
    discretized_logistic_mixture_mean,
    discretized_logistic_mixture_sample,
    discretized_logistic_sample,
)

pytestmark = pytest.mark.usefixtures("float64_default")

LEVELS = torch.arange(256, dtype=torch.float64)  # v = 0..255
GRID = LEVELS / 255  # every x a pixel can take


def all_pairs() -> torch.Tensor:
    """All 256² values (x_0, x_1) of a two-channel pixel at one position: (65536, 2, 1)."""
    v0, v1 = torch.meshgrid(LEVELS, LEVELS, indexing="ij")
    return torch.stack([v0, v1], dim=-1).reshape(-1, 2, 1) / 255


def scipy_log_pmf(v: np.ndarray, mu: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """log P(v) by the definition: differences of scipy's logistic CDF (of its survival function above the centre,
    where CDF differences would cancel), and logcdf / logsf for the edge bins."""
    y = 2 * v / 255 - 1
    upper, lower = (y + 1 / 255 - mu) / scale, (y - 1 / 255 - mu) / scale
    interior = np.where(lower > 0, logistic.sf(lower) - logistic.sf(upper), logistic.cdf(upper) - logistic.cdf(lower))
    with np.errstate(divide="ignore"):
        log_interior = np.log(interior)
    return np.where(v == 0, logistic.logcdf(upper), np.where(v == 255, logistic.logsf(lower), log_interior))


def mpmath_log_pmf(v: int, mu: float, log_scale: float) -> mpmath.mpf:
    """log P(v) at mpmath's working precision (callers set 60 digits), no clamp of log_scale: tails far beyond
    float64's range stay representable."""
    y = mpmath.mpf(2 * v) / 255 - 1
    scale = mpmath.exp(mpmath.mpf(log_scale))
    upper = (y + mpmath.mpf(1) / 255 - mpmath.mpf(mu)) / scale
    lower = (y - mpmath.mpf(1) / 255 - mpmath.mpf(mu)) / scale

    def cdf(t):
        return 1 / (1 + mpmath.exp(-t))

    def sf(t):
        return 1 / (1 + mpmath.exp(t))

    if v == 0:
        return mpmath.log(cdf(upper))
    if v == 255:
        return mpmath.log(sf(lower))
    return mpmath.log(sf(lower) - sf(upper) if lower > 0 else cdf(upper) - cdf(lower))


# (v, mu, log_scale): the first five put float64 sigmoid differences (or the edge's sigmoid) at exactly 0 or 1
EXTREMES = [
    (100, 0.9, -7.0),  # far below a sharp location: both CDFs ~ e^-1500
    (200, -0.9, -7.0),  # far above: both CDFs round to 1
    (0, 1.0, -7.0),  # lowest edge, location at the top
    (3, -40.0, -2.0),  # location far outside [-1, 1]
    (20, 0.0, -7.0),
    (255, -1.0, -7.0),  # highest edge, location at the bottom (its sigmoid is representable, just tiny)
    (128, 0.0, 8.0),  # huge scale: the bin holds ~ 2/(4 · 255 s) ≈ 7e-7, the difference of two numbers near ½
    (0, 30.0, 0.0),
    (255, 30.0, -7.0),  # log P ≈ -e^-huge: compared absolutely
]


def naive_log_pmf(v: int, mu: float, log_scale: float) -> torch.Tensor:
    """log of the sigmoid difference as written, in float64: what a stable formulation must improve on."""
    y, scale = torch.tensor(2 * v / 255 - 1), math.exp(log_scale)
    cdf_upper = torch.sigmoid((y + 1 / 255 - mu) / scale) if v < 255 else torch.tensor(1.0)
    cdf_lower = torch.sigmoid((y - 1 / 255 - mu) / scale) if v > 0 else torch.tensor(0.0)
    return torch.log(cdf_upper - cdf_lower)


def pmf_of_levels(mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """P(v) for v = 0..255 of each of (M,) (location, log-scale) pairs: (M, 256)."""
    return discretized_logistic_log_prob(GRID[:, None, None], mean[:, None], log_scale[:, None]).T.exp()


LOCATIONS = torch.tensor([-3.0, -1.0, -0.37, 0.0, 0.52, 1.0, 1.3, 40.0], dtype=torch.float64)
LOG_SCALES = torch.tensor([-7.0, -5.0, -2.0, 0.0, 3.0, 12.0], dtype=torch.float64)


def test_the_pmf_over_the_256_levels_sums_to_one_for_any_location_and_scale():
    mean, log_scale = (t.reshape(-1) for t in torch.meshgrid(LOCATIONS, LOG_SCALES, indexing="ij"))
    pmf = pmf_of_levels(mean, log_scale)
    torch.testing.assert_close(pmf.sum(dim=-1), torch.ones(len(mean)), rtol=0, atol=1e-10)
    # below the floor log_scale = -7 (PixelCNN++'s clamp) the distribution is the one at the floor
    torch.testing.assert_close(pmf_of_levels(mean, torch.full_like(mean, -30.0)), pmf_of_levels(mean, -7 + 0 * mean))
    assert LOG_SCALE_MIN == -7.0


def test_the_mixture_pmf_sums_to_one_over_one_channel_and_over_all_pairs_of_two():
    generator = torch.Generator().manual_seed(0)
    K = 4
    logit_weights = torch.randn(K, 1, generator=generator)
    means = torch.tensor([-1.4, -0.2, 0.6, 0.99]).reshape(K, 1, 1)
    log_scales = torch.tensor([-7.0, -3.0, -1.0, 2.0]).reshape(K, 1, 1)
    log_p = discretized_logistic_mixture_log_prob(
        GRID.reshape(256, 1, 1), logit_weights, means, log_scales, torch.zeros(K, 0, 1)
    )
    assert log_p.shape == (256,)
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0), rtol=0, atol=1e-10)

    means2 = torch.cat([means, torch.tensor([0.3, -0.8, 0.1, 0.5]).reshape(K, 1, 1)], dim=1)  # (K, 2, 1)
    log_scales2 = torch.cat([log_scales, torch.tensor([-2.0, -7.0, 0.5, -4.0]).reshape(K, 1, 1)], dim=1)
    coeffs = torch.tensor([2.0, -1.0, 0.4, -3.0]).reshape(K, 1, 1)  # tanh(2) = 0.96: strongly coupled
    log_p = discretized_logistic_mixture_log_prob(all_pairs(), logit_weights, means2, log_scales2, coeffs)
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0), rtol=0, atol=1e-10)


def test_the_log_prob_is_scipy_s_in_ordinary_regimes():
    generator = torch.Generator().manual_seed(1)
    n = 2000
    mean = torch.rand(n, generator=generator) * 2.4 - 1.2
    log_scale = torch.rand(n, generator=generator) * 4.5 - 4.0
    # levels within 8 scales of the location, so that CDF differences keep float64 precision
    target = mean + log_scale.exp() * (torch.rand(n, generator=generator) * 16 - 8)
    v = torch.round(torch.clamp((target + 1) * 127.5, 0, 255))
    reference = scipy_log_pmf(v.numpy(), mean.numpy(), log_scale.exp().numpy())
    ours = discretized_logistic_log_prob((v / 255)[:, None], mean[:, None], log_scale[:, None])  # (n,), P = 1
    assert (v == 0).any() and (v == 255).any() and ((v > 0) & (v < 255)).any()
    torch.testing.assert_close(ours, torch.from_numpy(reference), rtol=1e-6, atol=1e-12)
    # summed over P: the sum of the per-subpixel terms
    joint = discretized_logistic_log_prob(v.reshape(4, -1) / 255, mean.reshape(4, -1), log_scale.reshape(4, -1))
    torch.testing.assert_close(joint, torch.from_numpy(reference).reshape(4, -1).sum(dim=-1), rtol=1e-9, atol=0)
    # float32, the training dtype, stays close too
    ours32 = discretized_logistic_log_prob(
        (v / 255).float()[:, None], mean.float()[:, None], log_scale.float()[:, None]
    )
    torch.testing.assert_close(ours32.double(), torch.from_numpy(reference), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_log_prob_is_finite_and_accurate_where_naive_sigmoid_differences_underflow(dtype):
    for i, (v, mu, log_scale) in enumerate(EXTREMES):
        x, m, s = (torch.tensor([value], dtype=dtype) for value in (v / 255, mu, log_scale))
        ours = discretized_logistic_log_prob(x, m, s)
        # the reference at the inputs as this dtype holds them
        with mpmath.workdps(60):
            reference = float(mpmath_log_pmf(v, float(m), float(s)))
        assert torch.isfinite(ours)
        tolerance = 1e-9 if dtype == torch.float64 else 2e-5
        assert abs(ours.item() - reference) <= tolerance * abs(reference) + 1e-12, (v, mu, log_scale, ours, reference)
        if i < 5:
            assert torch.isinf(naive_log_pmf(v, mu, log_scale)), (v, mu, log_scale)
    # the huge-scale bin in float32: the naive difference of two sigmoids near ½ keeps about one digit
    v, mu, log_scale = EXTREMES[6]
    y = torch.tensor(2 * v / 255 - 1, dtype=torch.float32)
    scale = torch.tensor(math.exp(log_scale), dtype=torch.float32)
    naive = torch.log(torch.sigmoid((y + 1 / 255 - mu) / scale) - torch.sigmoid((y - 1 / 255 - mu) / scale))
    with mpmath.workdps(60):
        reference = float(mpmath_log_pmf(v, mu, log_scale))
    assert abs(naive.item() / reference - 1) > 1e-4


def test_k_latent_samples_per_image_broadcast_as_a_loop_would():
    generator = torch.Generator().manual_seed(2)
    k, B, P = 5, 3, 7
    x = torch.randint(0, 256, (B, P), generator=generator) / 255
    mean = torch.randn(k, B, P, generator=generator)
    log_scale = torch.randn(k, B, P, generator=generator) - 2
    looped = torch.stack([discretized_logistic_log_prob(x, mean[i], log_scale[i]) for i in range(k)])
    assert discretized_logistic_log_prob(x, mean, log_scale).shape == (k, B)
    torch.testing.assert_close(discretized_logistic_log_prob(x, mean, log_scale), looped, rtol=0, atol=0)

    K, C, S = 3, 3, 4
    x = torch.randint(0, 256, (B, C, S), generator=generator) / 255
    parameters = (
        torch.randn(k, B, K, S, generator=generator),
        torch.randn(k, B, K, C, S, generator=generator) * 0.5,
        torch.randn(k, B, K, C, S, generator=generator) - 2,
        torch.randn(k, B, K, 3, S, generator=generator),
    )
    batched = discretized_logistic_mixture_log_prob(x, *parameters)
    looped = torch.stack([discretized_logistic_mixture_log_prob(x, *(p[i] for p in parameters)) for i in range(k)])
    assert batched.shape == (k, B)
    torch.testing.assert_close(batched, looped, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_are_finite_and_right_in_extreme_regimes(dtype):
    v = torch.tensor([case[0] for case in EXTREMES], dtype=dtype)
    mean = torch.tensor([case[1] for case in EXTREMES], dtype=dtype, requires_grad=True)
    log_scale = torch.tensor([case[2] for case in EXTREMES], dtype=dtype, requires_grad=True)
    discretized_logistic_log_prob(v / 255, mean, log_scale).backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()
    if dtype == torch.float64:  # against mpmath's derivative of the 60-digit log-pmf
        for i, (level, mu, ls) in enumerate(EXTREMES):
            with mpmath.workdps(60):
                d_mean = mpmath.diff(lambda m: mpmath_log_pmf(level, m, ls), mu)
                d_log_scale = mpmath.diff(lambda s: mpmath_log_pmf(level, mu, s), ls)
            assert mean.grad[i].item() == pytest.approx(float(d_mean), rel=1e-8, abs=1e-10)
            assert log_scale.grad[i].item() == pytest.approx(float(d_log_scale), rel=1e-8, abs=1e-10)
    # below the floor the log-scale gets no gradient (torch.clamp), the location still does
    below = torch.tensor([-12.0], dtype=dtype, requires_grad=True)
    location = torch.tensor([0.1], dtype=dtype, requires_grad=True)
    discretized_logistic_log_prob(torch.tensor([0.5], dtype=dtype), location, below).backward()
    assert below.grad.item() == 0.0 and torch.isfinite(location.grad).all() and location.grad.item() != 0.0


def central_difference_hessian(function, point: torch.Tensor, step: float = 1e-7) -> torch.Tensor:
    """Columns (∇f(p + h e_j) - ∇f(p - h e_j)) / 2h of the autograd gradient: (D, D); h small for s = e^-7."""
    gradient = torch.func.grad(function)
    eye = torch.eye(point.numel()).reshape(-1, *point.shape)
    columns = [(gradient(point + step * e) - gradient(point - step * e)).reshape(-1) / (2 * step) for e in eye]
    return torch.stack(columns, dim=-1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # forward mode's decomps
def test_hessians_through_the_log_probs_work_under_vmap_and_match_finite_differences():
    x = torch.tensor([0, 3, 100, 128, 200, 255]) / 255
    log_scale = torch.tensor([-7.0, -2.0, -4.0, 0.5, -3.0, -1.0])
    means = torch.tensor([[-0.99, -0.95, -0.2, 0.0, 0.5, 0.97], [0.3, -1.2, -0.23, 0.01, 0.55, 1.5]])

    def log_p(mean):
        return discretized_logistic_log_prob(x, mean, log_scale)

    # reverse over reverse, the Laplace code's route, and torch.func.hessian's forward over reverse
    hessians = torch.func.vmap(torch.func.jacrev(torch.func.jacrev(log_p)))(means)  # (2, 6, 6)
    torch.testing.assert_close(torch.func.vmap(torch.func.hessian(log_p))(means), hessians, rtol=1e-12, atol=1e-12)
    for mean, hessian in zip(means, hessians):
        torch.testing.assert_close(hessian, central_difference_hessian(log_p, mean), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(hessian, torch.diag(torch.diagonal(hessian)), rtol=0, atol=0)  # P independent

    generator = torch.Generator().manual_seed(3)
    K, C, S = 2, 3, 2
    x3 = torch.randint(0, 256, (C, S), generator=generator) / 255
    logit_weights = torch.randn(K, S, generator=generator)
    log_scales = torch.randn(K, C, S, generator=generator) * 0.5 - 2
    coeffs = torch.randn(K, 3, S, generator=generator)
    mixture_means = torch.rand(2, K, C, S, generator=generator) * 2 - 1

    def mixture_log_p(means):
        return discretized_logistic_mixture_log_prob(x3, logit_weights, means, log_scales, coeffs)

    hessians = torch.func.vmap(torch.func.jacrev(torch.func.jacrev(mixture_log_p)))(mixture_means)
    torch.testing.assert_close(torch.func.vmap(torch.func.hessian(mixture_log_p))(mixture_means), hessians)
    hessians = hessians.reshape(2, K * C * S, K * C * S)
    for means, hessian in zip(mixture_means, hessians):
        torch.testing.assert_close(hessian, central_difference_hessian(mixture_log_p, means), rtol=1e-6, atol=1e-6)


def pooled_chi_square_p_value(counts: torch.Tensor, pmf: torch.Tensor) -> float:
    """Pearson's test of counts against pmf, the cells expecting fewer than 5 draws pooled into one."""
    expected = pmf * counts.sum()
    rare = expected < 5
    observed = torch.cat([counts[~rare], counts[rare].sum().reshape(1)]).numpy()
    expected = torch.cat([expected[~rare], expected[rare].sum().reshape(1)]).numpy()
    if expected[-1] < 1e-3:  # the pooled cell expects (almost) nothing: drop it, unless something landed there
        assert observed[-1] == 0
        observed, expected = observed[:-1], expected[:-1]
    return chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


SAMPLED = [(0.1, -3.0), (0.97, -3.0), (-0.3, -7.0), (2.0, 0.0), (0.0, 3.0)]  # (location, log-scale)


def test_draws_follow_the_pmf_and_the_exact_mean_is_the_pmf_s_and_the_draws():
    mean = torch.tensor([case[0] for case in SAMPLED])
    log_scale = torch.tensor([case[1] for case in SAMPLED])
    n = 200_000
    draws = discretized_logistic_sample(mean.expand(n, -1), log_scale, generator=torch.Generator().manual_seed(4))
    assert draws.shape == (n, len(SAMPLED))
    levels = draws * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-9)
    pmf = pmf_of_levels(mean, log_scale)  # (5, 256)
    for column in range(len(SAMPLED)):
        counts = torch.bincount(levels[:, column].round().long(), minlength=256).double()
        assert pooled_chi_square_p_value(counts, pmf[column]) > 1e-3, SAMPLED[column]

    exact = discretized_logistic_mean(mean, log_scale)
    torch.testing.assert_close(exact, pmf @ GRID, rtol=0, atol=1e-12)
    standard_error = ((pmf @ GRID.square() - exact.square()) / n).sqrt()
    assert ((draws.mean(dim=0) - exact).abs() < 4 * standard_error + 1e-12).all()

    # the exact mean over a grid of extremes, against Σ_v (v/255) P(v)
    grid_mean, grid_log_scale = (t.reshape(-1) for t in torch.meshgrid(LOCATIONS, LOG_SCALES, indexing="ij"))
    torch.testing.assert_close(
        discretized_logistic_mean(grid_mean, grid_log_scale),
        pmf_of_levels(grid_mean, grid_log_scale) @ GRID,
        rtol=0,
        atol=1e-12,
    )


def mixture_parameters(C: int, K: int = 3, log_scale_range=(-3.0, -2.0), seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    low, high = log_scale_range
    return (
        torch.randn(K, 1, generator=generator),
        torch.rand(K, C, 1, generator=generator) - 0.5,
        torch.rand(K, C, 1, generator=generator) * (high - low) + low,
        torch.randn(K, C * (C - 1) // 2, 1, generator=generator) * 1.5,
    )


def test_mixture_draws_follow_the_joint_pmf_of_two_coupled_channels():
    logit_weights, means, log_scales, coeffs = mixture_parameters(C=2, log_scale_range=(-4.0, -2.5))
    n = 300_000
    draws = discretized_logistic_mixture_sample(
        # only the locations carry the batch dimension: each draw must still pick its own component
        logit_weights,
        means.expand(n, -1, -1, -1),
        log_scales,
        coeffs,
        generator=torch.Generator().manual_seed(6),
    )
    assert draws.shape == (n, 2, 1)
    levels = (draws[:, :, 0] * 255).round().long()
    counts = torch.bincount(levels[:, 0] * 256 + levels[:, 1], minlength=256**2).double()
    pmf = discretized_logistic_mixture_log_prob(all_pairs(), logit_weights, means, log_scales, coeffs).exp()
    assert pooled_chi_square_p_value(counts, pmf) > 1e-3
    # shapes with batch, channels and positions: (B, C, S), on the grid
    generator = torch.Generator().manual_seed(7)
    x = discretized_logistic_mixture_sample(
        torch.randn(2, 4, 5, generator=generator),
        torch.randn(2, 4, 3, 5, generator=generator),
        torch.randn(4, 3, 5, generator=generator) - 2,
        torch.randn(4, 3, 5, generator=generator),
        generator=generator,
    )
    assert x.shape == (2, 3, 5) and (x * 255 == (x * 255).round()).all() and (x >= 0).all() and (x <= 1).all()


def test_the_mixture_mean_is_exact_for_one_channel_and_close_for_coupled_channels():
    parameters = mixture_parameters(C=1, log_scale_range=(-7.0, 1.0))
    pmf = discretized_logistic_mixture_log_prob(GRID.reshape(256, 1, 1), *parameters).exp()
    torch.testing.assert_close(
        discretized_logistic_mixture_mean(*parameters), (pmf @ GRID).reshape(1, 1), rtol=0, atol=1e-12
    )

    logit_weights, means, log_scales, coeffs = mixture_parameters(C=2)
    pairs = all_pairs()
    for coupling in (coeffs, torch.zeros_like(coeffs)):
        pmf = discretized_logistic_mixture_log_prob(pairs, logit_weights, means, log_scales, coupling).exp()
        exact = (pmf[:, None, None] * pairs).sum(dim=0)  # (2, 1)
        approximate = discretized_logistic_mixture_mean(logit_weights, means, log_scales, coupling)
        torch.testing.assert_close(approximate[0], exact[0], rtol=0, atol=1e-12)  # channel 0: always exact
        tolerance = 1e-4 if coupling is coeffs else 1e-12  # without coupling channel 1 is exact too
        torch.testing.assert_close(approximate[1], exact[1], rtol=0, atol=tolerance)


def test_the_mixture_with_one_component_and_one_channel_is_the_discretized_logistic():
    generator = torch.Generator().manual_seed(8)
    B, S = 4, 9
    x = torch.randint(0, 256, (B, 1, S), generator=generator) / 255
    means = torch.randn(B, 1, 1, S, generator=generator)
    log_scales = torch.randn(B, 1, 1, S, generator=generator) * 2 - 3
    mixture = discretized_logistic_mixture_log_prob(
        x, torch.randn(B, 1, S, generator=generator), means, log_scales, torch.zeros(B, 1, 0, S)
    )
    single = discretized_logistic_log_prob(x[:, 0], means[:, 0, 0], log_scales[:, 0, 0])
    torch.testing.assert_close(mixture, single, rtol=1e-12, atol=1e-12)


def test_three_coupled_channels_match_a_plain_float64_loop():
    generator = torch.Generator().manual_seed(9)
    B, K, C, S = 2, 4, 3, 3
    x = torch.randint(0, 256, (B, C, S), generator=generator) / 255
    logit_weights = torch.randn(B, K, S, generator=generator)
    means = torch.randn(B, K, C, S, generator=generator) * 0.6
    log_scales = torch.rand(B, K, C, S, generator=generator) * 2 - 2.5
    coeffs = torch.randn(B, K, 3, S, generator=generator)
    ours = discretized_logistic_mixture_log_prob(x, logit_weights, means, log_scales, coeffs)

    X, W, M, L, A = (t.numpy() for t in (x, logit_weights, means, log_scales, coeffs))
    reference = np.zeros(B)
    for b in range(B):
        for s in range(S):
            v = np.round(X[b, :, s] * 255)
            y = 2 * v / 255 - 1
            log_weights = W[b, :, s] - logsumexp(W[b, :, s])
            per_component = []
            for k in range(K):
                red = M[b, k, 0, s]
                green = M[b, k, 1, s] + np.tanh(A[b, k, 0, s]) * y[0]  # pair (1, 0)
                blue = M[b, k, 2, s] + np.tanh(A[b, k, 1, s]) * y[0] + np.tanh(A[b, k, 2, s]) * y[1]  # (2, 0), (2, 1)
                scales = np.exp(L[b, k, :, s])
                per_component.append(log_weights[k] + scipy_log_pmf(v, np.array([red, green, blue]), scales).sum())
            reference[b] += logsumexp(per_component)
    torch.testing.assert_close(ours, torch.from_numpy(reference), rtol=1e-9, atol=0)


def test_bits_per_dim_converts_nats_to_the_code_length_per_subpixel():
    # a uniform pmf over 256 levels costs 8 bits a subpixel
    assert bits_per_dim(3072 * math.log(256), 3072) == pytest.approx(8.0, rel=1e-15)
    # PixelCNN++'s 2.92 bits/dim on 32x32x3 CIFAR-10 is 2.92 · 3072 · ln 2 ≈ 6217.9 nats an image
    assert bits_per_dim(6217.9, 32 * 32 * 3) == pytest.approx(2.92, abs=1e-4)
    nats = torch.tensor([784 * math.log(2.0), 0.0])
    torch.testing.assert_close(bits_per_dim(nats, 784), torch.tensor([1.0, 0.0]))
    # the discretized logistic's -log p(x) of a batch, in bits/dim: between 0 and the 8 of a uniform code
    x = torch.randint(0, 256, (2, 784), generator=torch.Generator().manual_seed(10)) / 255
    bits = bits_per_dim(-discretized_logistic_log_prob(x, 2 * x - 1, torch.full_like(x, -3.0)), 784)
    assert ((bits > 0) & (bits < 8)).all()
