"""One stochastic layer (Kingma & Welling 2013, appendix C.2): q(z|x) = N(mu(x), diag σ²(x)), p(z), p(x|z).

With the default ModelSpec this is the PyTorch VAE example's MLP, 784-400-(20+20) and
20-400-784 with ReLU, its layers created in the example's order (encoder, its mu/logvar head,
decoder, output), so `torch.manual_seed(s)` gives the same initial weights. No loss lives here:
`vaelab.objectives` owns the ELBO and its relatives.
"""

from __future__ import annotations

import torch

from vaelab.config import ModelSpec
from vaelab.models.base import DiagonalGaussian, LatentVariableModel, Posterior, build_likelihood, encoder_network
from vaelab.models.priors import Components, StandardNormalPrior, VampPrior


class VAE(LatentVariableModel):
    """q(z|x) from `encoder`, p(x|z) = likelihood(decoder(z)), p(z) = `prior`."""

    def __init__(self, spec: ModelSpec = ModelSpec()) -> None:
        super().__init__()
        if spec.layers != 1:
            raise ValueError(f"VAE has one stochastic layer; build {spec.layers} with vaelab.models.build_model")
        self.spec = spec
        (latent,), (width,) = spec.latent_dims, spec.hidden
        self.encoder = encoder_network(spec, width, latent)
        self.likelihood = build_likelihood(spec, latent, width)
        self.prior = (
            VampPrior(spec.pseudo_inputs, spec.input_dim) if spec.prior == "vamp" else StandardNormalPrior(latent)
        )

    def posterior(self, x: torch.Tensor) -> Posterior:
        return DiagonalGaussian(*self.encoder(x))

    def prior_components(self) -> Components:
        """The VampPrior's mixture components q(z|u_k), (mu, logvar) each (K, D); None for N(0, I)."""
        if isinstance(self.prior, VampPrior):
            return self.encoder(self.prior.pseudo_inputs())
        return None

    def log_prior(self, z: torch.Tensor, components: Components = None) -> torch.Tensor:
        if components is None:
            components = self.prior_components()
        return self.prior.log_prob(z, components)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.prior.sample(n, generator, self.likelihood.decoder.head.weight, self.prior_components())

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def analytic_kl(self, posterior: Posterior) -> torch.Tensor | None:
        if isinstance(self.prior, StandardNormalPrior) and isinstance(posterior, DiagonalGaussian):
            return self.prior.kl(posterior.mu, posterior.logvar)
        return None
