"""Priors p(z): the standard normal, and the VampPrior (Tomczak & Welling 2018).

The VampPrior is a mixture of the model's own posterior at K learned pseudo-inputs u_k,
p(z) = (1/K) Σ_k q(z|u_k). The model computes those K Gaussians (it owns the encoder) and hands
them to the prior as `components`, (mu, logvar), each (K, D); the standard normal takes none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.distributions import kl_normal_diag_standard, log_normal_diag_mixture, log_standard_normal

Components = tuple[torch.Tensor, torch.Tensor] | None

# Tomczak & Welling's MNIST setting: pseudo-inputs start near zero (dark images), clipped to [0, 1].
PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD = 0.05, 0.01


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I_D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def log_prob(self, z: torch.Tensor, components: Components = None) -> torch.Tensor:
        """z (..., D) -> (...) nats."""
        return log_standard_normal(z)

    def sample(
        self, n: int, generator: torch.Generator | None, like: torch.Tensor, components: Components = None
    ) -> torch.Tensor:
        """(n, D) draws, on the device and in the dtype of `like`."""
        return torch.randn(n, self.dim, generator=generator, device=like.device, dtype=like.dtype)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form: (..., D) -> (...) nats."""
        return kl_normal_diag_standard(mu, logvar)


class VampPrior(nn.Module):
    """p(z) = (1/K) Σ_k q(z|u_k) with K learned pseudo-inputs u_k = hardtanh_[0,1](U_k), U (K, P)."""

    def __init__(self, k: int, input_dim: int) -> None:
        super().__init__()
        self.raw_pseudo_inputs = nn.Parameter(torch.normal(PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD, (k, input_dim)))

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs (K, P), pixels in [0, 1]."""
        return F.hardtanh(self.raw_pseudo_inputs, 0.0, 1.0)

    def log_prob(self, z: torch.Tensor, components: Components = None) -> torch.Tensor:
        """z (..., D) -> log (1/K) Σ_k N(z; mu_k, σ_k²) (...) nats; components = (mu, logvar) (K, D)."""
        assert components is not None, "the VampPrior needs the posterior at its pseudo-inputs"
        return log_normal_diag_mixture(z, *components)

    def sample(
        self, n: int, generator: torch.Generator | None, like: torch.Tensor, components: Components = None
    ) -> torch.Tensor:
        """Pick k uniformly, then z ~ q(z|u_k): (n, D)."""
        assert components is not None, "the VampPrior needs the posterior at its pseudo-inputs"
        mu, logvar = components
        which = torch.randint(0, mu.shape[0], (n,), generator=generator, device=mu.device)
        eps = torch.randn(n, mu.shape[1], generator=generator, device=mu.device, dtype=mu.dtype)
        return mu[which] + torch.exp(0.5 * logvar[which]) * eps
