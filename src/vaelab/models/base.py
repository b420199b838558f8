"""The interface every latent-variable model meets; everything above the models uses only this.

A model is p(x, z) = p(x|z) p(z) with an amortised posterior q(z|x). The latent z is one flat
tensor (..., D): with two stochastic layers it is (z1, z2) concatenated, so the evaluators
(importance sampling, Laplace's method over the joint latent, active units) never need to know
how many layers there are. Noise is always an input: `posterior(x).rsample(eps)` maps
eps ~ N(0, I) (..., B, D) to z, so the caller's generator decides every draw.

Units: every log-density is in nats, summed over its event (pixels or latent coordinates).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from vaelab.config import ModelSpec
from vaelab.distributions import bernoulli_log_prob, gaussian_log_prob, log_normal_diag
from vaelab.models.priors import Components
from vaelab.nn import MLP, full_precision


class Posterior(ABC):
    """q(z|x) for a batch of B images."""

    @property
    @abstractmethod
    def mean(self) -> torch.Tensor:
        """(B, D): a central point of q (reconstructions, active units, Newton's start)."""

    @abstractmethod
    def rsample(self, eps: torch.Tensor) -> torch.Tensor:
        """eps (..., B, D) ~ N(0, I) -> z (..., B, D) ~ q(z|x), differentiable in q's parameters."""

    @abstractmethod
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x): z (..., B, D) -> (..., B) nats."""

    @abstractmethod
    def log_prob_stopped(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) with q's parameters held constant (no gradient to them), z still differentiable.

        The doubly reparameterized gradient (Tucker et al. 2018) differentiates log w through z only.
        """


class DiagonalGaussian(Posterior):
    """N(mu, diag exp(logvar)) for each of B images: mu, logvar (B, D)."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mu, self.logvar = mu, logvar

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    def rsample(self, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + σ ⊙ eps (Kingma & Welling 2013, eq. 10)."""
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return log_normal_diag(z, self.mu, self.logvar)

    def log_prob_stopped(self, z: torch.Tensor) -> torch.Tensor:
        return log_normal_diag(z, self.mu.detach(), self.logvar.detach())


class Likelihood(nn.Module):
    """p(x|h) for an observation x (..., P) given the latent it conditions on, h (..., D_h), through an MLP decoder.

    `decoder(h)` gives the distribution's parameter: Bernoulli logits, or the Gaussian mean.
    """

    kind = ""

    def __init__(self, decoder: MLP) -> None:
        super().__init__()
        self.decoder = decoder

    def parameters_of(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., D_h) -> logits or mean (..., P), float32 under autocast."""
        return full_precision(self.decoder(h))

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """log p(x|h): x (..., P) broadcasting against h's batch shape -> (...) nats."""
        raise NotImplementedError

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """E[x|h] (..., P): what pictures of samples and reconstructions show."""
        raise NotImplementedError

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw x ~ p(x|h) (..., P)."""
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    """p(x|h) = Π_i φ_i^{x_i} (1 - φ_i)^{1 - x_i}, φ = sigmoid(decoder(h)) (derivation (c))."""

    kind = "bernoulli"

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(self.parameters_of(h), x)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.parameters_of(h))

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(self.mean(h), generator=generator)


class GaussianLikelihood(Likelihood):
    """p(x|h) = N(x; decoder(h), std² I) with a fixed std: with a linear decoder, log p(x) is exact."""

    kind = "gaussian"

    def __init__(self, decoder: MLP, std: float) -> None:
        super().__init__(decoder)
        self.std = std

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(self.parameters_of(h), x, self.std)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.parameters_of(h)

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean = self.mean(h)
        return mean + self.std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


def build_likelihood(spec: ModelSpec, in_dim: int, width: int) -> Likelihood:
    """p(x|h) of `spec.likelihood` with an MLP decoder in_dim -> width x depth -> input_dim."""
    decoder = MLP(in_dim, width, spec.depth, spec.input_dim, spec.activation)
    if spec.likelihood == "gaussian":
        return GaussianLikelihood(decoder, spec.likelihood_std)
    return BernoulliLikelihood(decoder)


class LatentVariableModel(nn.Module, ABC):
    """p(x, z) = p(x|z) p(z) with q(z|x); z (..., D) flat, D = spec.latent_dim.

    Subclasses give the posterior, the prior over the whole latent and the slice of z that
    p(x|z) conditions on; the joint, the pictures and the evaluators follow from those.
    """

    spec: ModelSpec
    likelihood: Likelihood

    @property
    def latent_dim(self) -> int:
        return self.spec.latent_dim

    @abstractmethod
    def posterior(self, x: torch.Tensor) -> Posterior:
        """q(z|x) for x (B, P)."""

    @abstractmethod
    def log_prior(self, z: torch.Tensor, components: Components = None) -> torch.Tensor:
        """log p(z) of the whole latent: z (..., D) -> (...) nats.

        `components` are `prior_components()` computed once by a caller that evaluates many z
        (the evaluators); None computes them here.
        """

    def prior_components(self) -> Components:
        """What the prior needs from the rest of the model (a VampPrior's q(z|u_k)); None for N(0, I)."""
        return None

    @abstractmethod
    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z): (n, D)."""

    @abstractmethod
    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """The part of z (..., D) that p(x|z) conditions on: z itself, or z1 with two layers."""

    def analytic_kl(self, posterior: Posterior) -> torch.Tensor | None:
        """KL(q(z|x) || p(z)) (B,) in closed form where the prior and posterior allow one, else None."""
        return None

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z): x (B, P), z (..., B, D) -> (..., B) nats."""
        return self.likelihood.log_prob(x, self.decoder_input(z))

    def log_joint(self, x: torch.Tensor, z: torch.Tensor, components: Components = None) -> torch.Tensor:
        """log p(x, z) = log p(x|z) + log p(z): x (B, P), z (..., B, D) -> (..., B) nats."""
        return self.log_likelihood(x, z) + self.log_prior(z, components)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameter at z (..., D): Bernoulli logits (or the Gaussian mean), (..., P)."""
        return self.likelihood.parameters_of(self.decoder_input(z))

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] (..., P)."""
        return self.likelihood.mean(self.decoder_input(z))


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def sample_means(model: LatentVariableModel, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws from p(x) = ∫ p(x|z) p(z) dz shown as decoder means: z ~ p(z) (n, D) -> E[x|z] (n, P)."""
    return model.mean_image(model.sample_latent(n, generator))


@torch.no_grad()
def reconstruct_means(model: LatentVariableModel, x: torch.Tensor) -> torch.Tensor:
    """x (n, P) -> E[x|z] at the posterior mean z = E_q[z|x], (n, P)."""
    return model.mean_image(model.posterior(x).mean)
