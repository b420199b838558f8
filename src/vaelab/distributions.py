"""Log-densities and KL divergences as pure tensor functions, in nats.

Everything here is written with plain torch operations (no in-place updates, no data-dependent
branches), so `torch.func` can differentiate and vmap through it: the Laplace evidence takes
Hessians of the models' log p(x, z), which are sums of these. The closed forms are derived in
docs/derivations.md and tested against `torch.distributions`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I): z (..., D) -> (...) nats."""
    return -0.5 * (z.square().sum(dim=-1) + z.shape[-1] * LOG_2PI)


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)): broadcasting (..., D) -> (...) nats."""
    return -0.5 * (((z - mu).square() * torch.exp(-logvar) + logvar).sum(dim=-1) + z.shape[-1] * LOG_2PI)


def log_normal_diag_mixture(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k N(z; mu_k, diag exp(logvar_k)): z (..., D), mu and logvar (K, D) -> (...) nats.

    The squared distances are expanded into two (…, D) x (D, K) products,
    Σ_d (z_d - m_kd)² / v_kd = z² · (1/v_k) - 2 z · (m_k / v_k) + Σ_d m_kd² / v_kd,
    so memory grows with (…, K), not (…, K, D): a VampPrior with K = 500 stays cheap.
    """
    precision = torch.exp(-logvar)  # (K, D)
    constant = (mu.square() * precision + logvar).sum(dim=-1) + z.shape[-1] * LOG_2PI  # (K,)
    quadratic = z.square() @ precision.T - 2.0 * (z @ (mu * precision).T)  # (..., K)
    return torch.logsumexp(-0.5 * (quadratic + constant), dim=-1) - math.log(mu.shape[0])


def kl_normal_diag_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) = ½ Σ_j (mu_j² + σ_j² - 1 - log σ_j²): (..., D) -> (...) nats.

    Derivation (b) of docs/derivations.md.
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = Σ_i x_i log φ_i + (1 - x_i) log(1 - φ_i), φ = sigmoid(logits): (..., P) -> (...) nats.

    Minus the summed binary cross-entropy (derivation (c)), computed from logits so that φ near
    0 or 1 stays finite; x broadcasts against logits (many z per image).
    """
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(dim=-1)


def gaussian_log_prob(mean: torch.Tensor, x: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mean, std² I): (..., P) -> (...) nats, for a fixed observation noise std."""
    return -0.5 * (((x - mean) / std).square().sum(dim=-1) + mean.shape[-1] * (LOG_2PI + 2.0 * math.log(std)))


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/k) Σ_i exp(values_i) along `dim` (k = its size), stable for any magnitude.

    With values = log weights this is the importance-weighted bound L_k (Burda et al. 2015, eq. 8);
    training's IWAE and DReG objectives and every evaluator use this one function.
    """
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


# 8-bit likelihoods: the discretized logistic (Kingma et al. 2016, IAF) and its mixture (Salimans et al. 2017,
# PixelCNN++). Derivation: section "8-bit likelihoods" of docs/derivations.md.

LOG_SCALE_MIN = -7.0  # PixelCNN++'s floor on log s: s ≥ e^-7 ≈ 9.1e-4, about a quarter of a bin's half-width
_LEVELS = 255  # the top of 0..255
_HALF_BIN = 1.0 / _LEVELS  # half the width of one bin on the [-1, 1] scale
_LN2 = math.log(2.0)
_MEAN_CHUNK = 64  # levels j summed at a time by discretized_logistic_mean, to bound memory at (..., P, 64)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - e^-d) for d > 0, accurate at both ends (Mächler 2012): -expm1 below ln 2, log1p above.

    Each branch gets an argument it is finite on, so torch.where's unused branch feeds no inf or nan to autograd.
    """
    small = d < _LN2
    return torch.where(
        small,
        torch.log(-torch.expm1(-torch.where(small, d, _LN2))),
        torch.log1p(-torch.exp(-torch.where(small, _LN2, d))),
    )


def _discretized_logistic_log_pmf(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log P(v), v = 255 x, of the discretized logistic: broadcasting tensors -> nats, not summed.

    With a = (y + 1/255 - μ)/s and b = (y - 1/255 - μ)/s the bin's mass is F(a) - F(b), F = sigmoid, and the
    identity F(a) - F(b) = F(a) F(-b) (1 - e^-(a-b)) splits its log into three terms that are each stable:
    -softplus(-a) - softplus(b) + log1mexp(2/(255 s)). No difference of nearly equal numbers is ever formed, in the
    tails (|y - μ|/s large), for tiny s or for huge s. The edge bins drop the factor they lack: P(0) = F(a) and
    P(255) = F(-b).
    """
    inv_scale = torch.exp(-torch.clamp(log_scale, min=LOG_SCALE_MIN))
    centred = 2.0 * x - 1.0 - mean
    upper = (centred + _HALF_BIN) * inv_scale  # a
    lower = (centred - _HALF_BIN) * inv_scale  # b
    is_lowest = x < 0.5 / _LEVELS
    is_highest = x > (_LEVELS - 0.5) / _LEVELS
    log_cdf_upper = torch.where(is_highest, 0.0, -F.softplus(-upper))  # log F(a); F(+inf) = 1 for v = 255
    log_sf_lower = torch.where(is_lowest, 0.0, -F.softplus(lower))  # log F(-b); F(-b) = 1 for v = 0 (b = -inf)
    log_width = torch.where(is_lowest | is_highest, 0.0, _log1mexp(2.0 * _HALF_BIN * inv_scale))
    return log_cdf_upper + log_sf_lower + log_width


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) = Σ_i log P(v_i | μ_i, s_i), v = 255 x ∈ {0..255}: broadcasting (..., P) -> (...) nats.

    On the scale y = 2x - 1 ∈ [-1, 1] (where the location μ = `mean` lives; it may leave [-1, 1]) with bins of
    half-width 1/255 and F the logistic CDF (sigmoid), s = exp(log_scale):
    P(v) = F((y + 1/255 - μ)/s) - F((y - 1/255 - μ)/s) for 0 < v < 255, and the edge bins take the tails,
    P(0) = F((-1 + 1/255 - μ)/s), P(255) = 1 - F((1 - 1/255 - μ)/s). The 256 masses sum to 1.

    log_scale is clamped from below at LOG_SCALE_MIN = -7, as in PixelCNN++: figures stay comparable with the
    literature, the gradient (≈ 1/s) stays bounded, and below the floor log_scale gets zero gradient. The log of each
    difference is computed from an exact factorisation (see `_discretized_logistic_log_pmf`), not PixelCNN++'s
    switch to the density at the bin centre, so it is accurate and finite in every regime, with finite gradients.
    x (e.g. (B, P)) broadcasts against mean and log_scale (e.g. (k, B, P), k latent samples per image).
    """
    return _discretized_logistic_log_pmf(x, mean, log_scale).sum(dim=-1)


def _check_channel_pairs(means: torch.Tensor, coeffs: torch.Tensor) -> int:
    """The number of channels C = means.shape[-2], once coeffs is seen to hold C(C-1)/2 pairs in dim -2."""
    channels = means.shape[-2]
    if coeffs.shape[-2] != channels * (channels - 1) // 2:
        raise ValueError(
            f"coeffs has {coeffs.shape[-2]} channel pairs in dim -2; {channels} channels need "
            f"C(C-1)/2 = {channels * (channels - 1) // 2} (an empty dimension for C = 1)"
        )
    return channels


def _autoregressive_locations(observed: torch.Tensor, means: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """μ_kc = means_kc + Σ_{c' < c} tanh(coeffs_k,pair(c, c')) observed_c': (..., K, C, S) locations on [-1, 1].

    observed (..., 1 or K, C, S) holds the earlier channels on the y = 2x - 1 scale; pair(c, c') = c(c-1)/2 + c',
    the order (1,0), (2,0), (2,1), ... The loops run over channels, a shape, never over data.
    """
    channels = _check_channel_pairs(means, coeffs)
    weights = torch.tanh(coeffs)
    columns = []
    for c in range(channels):
        location = means[..., c, :]
        for earlier in range(c):
            location = location + weights[..., c * (c - 1) // 2 + earlier, :] * observed[..., earlier, :]
        columns.append(location)
    return torch.stack(torch.broadcast_tensors(*columns), dim=-2)


def discretized_logistic_mixture_log_prob(
    x: torch.Tensor,
    logit_weights: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    coeffs: torch.Tensor,
) -> torch.Tensor:
    """log p(x) = Σ_s log Σ_k π_ks Π_c P(v_cs | μ_kcs, s_kcs), π = softmax_k(logit_weights): -> (...) nats.

    PixelCNN++'s mixture of discretized logistics with its linear coupling of the channels (Salimans et al. 2017).
    x (..., C, S) in [0, 1] (C channels, S = H·W positions); logit_weights (..., K, S); means and log_scales
    (..., K, C, S); coeffs (..., K, C(C-1)/2, S), an empty dimension for C = 1. Channel c of component k sits at
    μ_kc = means_kc + Σ_{c' < c} tanh(coeffs_k,pair(c, c')) y_c', y = 2x - 1 the *observed* earlier channels, pairs
    ordered (1,0), (2,0), (2,1), ...; the tanh, as in PixelCNN++, keeps each coupling in (-1, 1). Each P is the
    discretized logistic of `discretized_logistic_log_prob` (same scale, edge bins and log_scale floor); the sum over
    components is a logsumexp. The batch dims (...) of x broadcast against the parameters'.
    """
    observed = (2.0 * x - 1.0).unsqueeze(-3)  # (..., 1, C, S)
    locations = _autoregressive_locations(observed, means, coeffs)  # (..., K, C, S)
    log_pmf = _discretized_logistic_log_pmf(x.unsqueeze(-3), locations, log_scales).sum(dim=-2)  # (..., K, S)
    log_weights = torch.log_softmax(logit_weights, dim=-2)
    return torch.logsumexp(log_weights + log_pmf, dim=-2).sum(dim=-1)


def _logistic_noise(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """log u - log(1 - u), u ~ U[0, 1): standard logistic draws (u = 0 gives -inf, which the clamp maps to v = 0)."""
    u = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return torch.log(u) - torch.log1p(-u)


def _nearest_level(y: torch.Tensor) -> torch.Tensor:
    """The level v ∈ {0..255} whose bin holds y (y clamped to [-1, 1]), as a float tensor."""
    return torch.round(torch.clamp((y + 1.0) * (_LEVELS / 2.0), 0.0, float(_LEVELS)))


def discretized_logistic_sample(
    mean: torch.Tensor, log_scale: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x = v/255 with v the bin of y = μ + s (log u - log(1 - u)), u ~ U(0, 1): broadcasting (..., P) -> (..., P).

    A draw from the pmf of `discretized_logistic_log_prob` (μ on the [-1, 1] scale, log_scale floored at -7):
    y is clamped to [-1, 1] and rounded to the nearest of the 256 levels, so the tails land in the edge bins.
    """
    scale = torch.exp(torch.clamp(log_scale, min=LOG_SCALE_MIN))
    shape = torch.broadcast_shapes(mean.shape, log_scale.shape)
    return _nearest_level(mean + scale * _logistic_noise(shape, mean, generator)) / _LEVELS


def discretized_logistic_mixture_sample(
    logit_weights: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    coeffs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x ~ the mixture of `discretized_logistic_mixture_log_prob` (parameters as there): -> (..., C, S) in [0, 1].

    At each position a component k is drawn by Gumbel-max (argmax_k logit_weights_k - log(-log u_k)), then the
    channels in order, channel c shifted by Σ_{c' < c} tanh(coeffs_k,pair(c, c')) y_c' with the already drawn,
    discretized earlier channels y_c' = 2x_c' - 1, exactly as the log-prob conditions on observed ones.
    """
    channels = _check_channel_pairs(means, coeffs)
    # One uniform per (batch, component, position) of the broadcast parameters, so that no two draws share a choice.
    per_component = [tensor.shape[:-2] + tensor.shape[-1:] for tensor in (means, log_scales, coeffs)]
    component_shape = torch.broadcast_shapes(logit_weights.shape, *per_component)  # (..., K, S)
    u = torch.rand(component_shape, generator=generator, dtype=means.dtype, device=means.device)
    component = torch.argmax(logit_weights - torch.log(-torch.log(u)), dim=-2, keepdim=True).unsqueeze(-2)

    def chosen(parameters: torch.Tensor) -> torch.Tensor:  # (..., K, *, S) -> (..., *, S), component k's slice
        padded = parameters.reshape((1,) * (component.dim() - parameters.dim()) + parameters.shape)
        return torch.take_along_dim(padded, component, dim=-3).squeeze(-3)

    chosen_means = chosen(means)  # (..., C, S)
    chosen_scales = torch.exp(torch.clamp(chosen(log_scales), min=LOG_SCALE_MIN))
    coupling = torch.tanh(chosen(coeffs))  # (..., C(C-1)/2, S)
    shape = torch.broadcast_shapes(chosen_means.shape, chosen_scales.shape)
    noise = _logistic_noise(shape, means, generator)
    drawn = []  # observed values y_c' = 2 v/255 - 1 of the channels drawn so far
    for c in range(channels):
        location = chosen_means[..., c, :]
        for earlier in range(c):
            location = location + coupling[..., c * (c - 1) // 2 + earlier, :] * drawn[earlier]
        level = _nearest_level(location + chosen_scales[..., c, :] * noise[..., c, :])
        drawn.append(2.0 * level / _LEVELS - 1.0)
    return (torch.stack(drawn, dim=-2) + 1.0) / 2.0


def discretized_logistic_mean(mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """E[x] = E[v]/255 = (1/255) Σ_{j=1}^{255} P(v ≥ j), exact for the discretized logistic: (..., P) -> (..., P).

    P(v ≥ j) = 1 - F((y_j - 1/255 - μ)/s) = sigmoid((μ - y_j + 1/255)/s), y_j = 2j/255 - 1 (μ on the [-1, 1]
    scale, log_scale floored at -7 as in the log-prob). The sum runs over chunks of 64 levels, so memory stays
    at (..., P, 64). Unlike the continuous location, this mean feels the edge bins: it is pulled inside [0, 1].
    """
    inv_scale = torch.exp(-torch.clamp(log_scale, min=LOG_SCALE_MIN)).unsqueeze(-1)
    location = mean.unsqueeze(-1)
    expected_level = 0.0
    for first in range(1, _LEVELS + 1, _MEAN_CHUNK):
        j = torch.arange(first, min(first + _MEAN_CHUNK, _LEVELS + 1), dtype=mean.dtype, device=mean.device)
        lower_edges = 2.0 * j / _LEVELS - 1.0 - _HALF_BIN  # y_j - 1/255, (chunk,)
        expected_level = expected_level + torch.sigmoid((location - lower_edges) * inv_scale).sum(dim=-1)
    return expected_level / _LEVELS


def discretized_logistic_mixture_mean(
    logit_weights: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, coeffs: torch.Tensor
) -> torch.Tensor:
    """E[x_c] ≈ Σ_k π_k E_k[x_c], π = softmax_k(logit_weights): parameters as in the mixture log-prob -> (..., C, S).

    E_k[x_c] is `discretized_logistic_mean` at μ_kc = means_kc + Σ_{c' < c} tanh(coeffs_k,pair(c, c')) ȳ_kc', with
    ȳ_kc' = 2 E_k[x_c'] - 1 the component's mean of each earlier channel standing in for its observed value. Exact for
    channel 0 (hence for C = 1); for c > 0 an approximation, since the discretized mean is not linear in the shift
    (it is close while the component's mass stays away from the edge bins).
    """
    channels = _check_channel_pairs(means, coeffs)
    coupling = torch.tanh(coeffs)
    component_means = []  # E_k[x_c], (..., K, S) each
    for c in range(channels):
        location = means[..., c, :]
        for earlier in range(c):
            location = location + coupling[..., c * (c - 1) // 2 + earlier, :] * (2.0 * component_means[earlier] - 1.0)
        component_means.append(discretized_logistic_mean(location, log_scales[..., c, :]))
    weights = torch.softmax(logit_weights, dim=-2).unsqueeze(-2)  # (..., K, 1, S)
    return (weights * torch.stack(torch.broadcast_tensors(*component_means), dim=-2)).sum(dim=-3)


def bits_per_dim(nats: float | torch.Tensor, dims: int | float) -> float | torch.Tensor:
    """-log2 p(x) / dims = nats / (dims · ln 2): a negative log-likelihood in nats -> bits per dimension.

    Works on floats and tensors. Under a likelihood that is a proper pmf over the 256 levels of each subpixel (the
    discretized logistic and its mixture), -log2 p(x) is a code length, so this is bits per subpixel, the unit of the
    8-bit literature (uniform: 8). A Bernoulli on binarized pixels is a pmf over {0, 1}, so it too gives bits/dim (of
    binary data); a Bernoulli "likelihood" of grey levels in [0, 1] is not normalised over anything, and its figure
    divided by dims · ln 2 is not a code length.
    """
    return nats / (dims * _LN2)
