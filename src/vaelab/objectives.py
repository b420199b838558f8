"""The ELBO and its relatives as pure tensor functions, in nats.

Sign conventions (docs/derivations.md): log p(x) = ELBO + KL(q(z|x) || p(z|x)) with
ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)); we minimise -ELBO = reconstruction + KL, where
reconstruction = -log p(x|z) is the binary cross-entropy summed over pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2).

    mu, logvar (..., D) -> (...) nats (derivation (b)).
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_i x_i log phi_i + (1 - x_i) log(1 - phi_i), phi = sigmoid(logits).

    logits (..., P), x (..., P) in [0, 1] -> (...) nats; equals minus the summed binary
    cross-entropy (derivation (c)), computed from logits so that phi near 0 or 1 stays finite.
    """
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(dim=-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I): z (..., D) -> (...) nats."""
    return -0.5 * (z.square().sum(dim=-1) + z.shape[-1] * LOG_2PI)


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)): broadcasting (..., D) -> (...) nats."""
    return -0.5 * (((z - mu).square() * torch.exp(-logvar) + logvar).sum(dim=-1) + z.shape[-1] * LOG_2PI)


def elbo_terms(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction -log p(x|z) and KL(q(z|x) || p(z)), each (B,) nats.

    -ELBO = reconstruction + KL, estimated with the one z that produced `logits`.
    """
    return -bernoulli_log_likelihood(logits, x), gaussian_kl(mu, logvar)


def batch_negative_elbo(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed over the batch: (reconstruction, KL), two scalars in nats.

    The training loss is their sum, as in the template (a sum over images, not a mean);
    one fused BCE-with-logits call is much faster than per-image rows.
    """
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum()
    return reconstruction, kl


def log_importance_weights(
    x: torch.Tensor, z: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for z (K, B, D) drawn from q: -> (K, B) nats."""
    return bernoulli_log_likelihood(logits, x) + log_standard_normal(z) - log_normal_diag(z, mu, logvar)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """L_k = log (1/k) sum_i w_i (Burda et al. 2015, eq. 8): log_weights (k, B) -> (B,) nats.

    k = 1 is the ELBO's one-sample estimate; L_k rises towards log p(x) as k grows.
    """
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights, dim=0) - math.log(k)
