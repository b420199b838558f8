"""Two stochastic layers (Burda et al. 2015, section 5): q(z1|x) q(z2|z1), p(z2) p(z1|z2) p(x|z1).

The latent is the pair, held as one flat tensor z = (z1, z2) of D1 + D2 coordinates, so the
evaluators, Laplace's method over the joint latent included, treat it as any other latent.
With a VampPrior the top prior is p(z2) = (1/K) Σ_k q(z2 | E_q[z1|u_k]): the model's own
second-layer posterior, reached through the first layer's mean at each pseudo-input.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from vaelab.config import ModelSpec
from vaelab.distributions import log_normal_diag
from vaelab.models.base import LatentVariableModel, Posterior, build_likelihood, encoder_network
from vaelab.models.priors import Components, StandardNormalPrior, VampPrior
from vaelab.nn import GaussianMLP


class TwoLayerPosterior(Posterior):
    """q(z1, z2|x) = N(z1; mu1(x), σ1²(x)) N(z2; mu2(z1), σ2²(z1)) for B images."""

    def __init__(self, upper: GaussianMLP, mu1: torch.Tensor, logvar1: torch.Tensor) -> None:
        self.upper, self.mu1, self.logvar1 = upper, mu1, logvar1
        self.d1 = mu1.shape[-1]

    @property
    def mean(self) -> torch.Tensor:
        """(B, D1 + D2): E[z1], and E[z2 | z1] at z1 = E[z1]."""
        return torch.cat((self.mu1, self.upper(self.mu1)[0]), dim=-1)

    def layer_moments(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(mu1, logvar1) of q(z1|x), (mu2, logvar2) of q(z2|z1) at z1 = E[z1]], (B, D1) and (B, D2)."""
        return [(self.mu1, self.logvar1), self.upper(self.mu1)]

    def rsample(self, eps: torch.Tensor) -> torch.Tensor:
        eps1, eps2 = eps[..., : self.d1], eps[..., self.d1 :]
        z1 = torch.addcmul(self.mu1, torch.exp(0.5 * self.logvar1), eps1)
        mu2, logvar2 = self.upper(z1)
        return torch.cat((z1, torch.addcmul(mu2, torch.exp(0.5 * logvar2), eps2)), dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2 = z[..., : self.d1], z[..., self.d1 :]
        return log_normal_diag(z1, self.mu1, self.logvar1) + log_normal_diag(z2, *self.upper(z1))

    def log_prob_stopped(self, z: torch.Tensor) -> torch.Tensor:
        # q(z2|z1)'s network with its weights held constant, still a function of z1.
        z1, z2 = z[..., : self.d1], z[..., self.d1 :]
        frozen = {name: value.detach() for name, value in self.upper.named_parameters()}
        mu2, logvar2 = functional_call(self.upper, frozen, (z1,))
        return log_normal_diag(z1, self.mu1.detach(), self.logvar1.detach()) + log_normal_diag(z2, mu2, logvar2)


class TwoLayerVAE(LatentVariableModel):
    """Burda et al.'s two-stochastic-layer model built from ModelSpec blocks (latent_dims = (D1, D2))."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.layers != 2:
            raise ValueError(f"TwoLayerVAE has two stochastic layers, the spec asks for {spec.layers}")
        self.spec = spec
        (d1, d2), (width1, width2) = spec.latent_dims, spec.hidden
        self.encoder1 = encoder_network(spec, width1, d1)  # q(z1|x)
        self.encoder2 = GaussianMLP(d1, width2, spec.depth, d2, spec.activation)  # q(z2|z1)
        self.decoder2 = GaussianMLP(d2, width2, spec.depth, d1, spec.activation)  # p(z1|z2)
        self.likelihood = build_likelihood(spec, d1, width1)  # p(x|z1)
        self.prior = VampPrior(spec.pseudo_inputs, spec.input_dim) if spec.prior == "vamp" else StandardNormalPrior(d2)
        self.d1 = d1

    def posterior(self, x: torch.Tensor) -> Posterior:
        return TwoLayerPosterior(self.encoder2, *self.encoder1(x))

    def prior_components(self) -> Components:
        """The VampPrior's q(z2 | E[z1|u_k]), (mu, logvar) each (K, D2); None for N(0, I)."""
        if isinstance(self.prior, VampPrior):
            mu1, _ = self.encoder1(self.prior.pseudo_inputs())
            return self.encoder2(mu1)
        return None

    def log_prior(self, z: torch.Tensor, components: Components = None) -> torch.Tensor:
        """log p(z2) + log p(z1|z2)."""
        if components is None:
            components = self.prior_components()
        z1, z2 = z[..., : self.d1], z[..., self.d1 :]
        return self.prior.log_prob(z2, components) + log_normal_diag(z1, *self.decoder2(z2))

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z2 = self.prior.sample(n, generator, self.likelihood.decoder.head.weight, self.prior_components())
        mu1, logvar1 = self.decoder2(z2)
        z1 = mu1 + torch.exp(0.5 * logvar1) * torch.randn(
            mu1.shape, generator=generator, device=mu1.device, dtype=mu1.dtype
        )
        return torch.cat((z1, z2), dim=-1)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., : self.d1]
