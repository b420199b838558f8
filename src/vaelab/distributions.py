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
