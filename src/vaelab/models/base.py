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

from vaelab import distributions as dist
from vaelab.config import ModelSpec
from vaelab.distributions import bernoulli_log_prob, gaussian_log_prob, log_normal_diag
from vaelab.models.priors import Components
from vaelab.nn import MLP, ConvDecoder, ConvEncoder, GaussianMLP, GaussianNet, full_precision


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

    @abstractmethod
    def layer_moments(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per stochastic layer, the one next to x first: (mean, log-variance), each (B, D_layer)."""


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

    def layer_moments(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(mu, logvar)], each (B, D): the one stochastic layer's mean and log-variance."""
        return [(self.mu, self.logvar)]


class Likelihood(nn.Module):
    """p(x|h) for an observation x (..., P) given the latent it conditions on, h (..., D_h), through a decoder.

    `decoder(h)` gives the distribution's parameters, `per_position(C)` numbers for each of the image's
    S = H·W positions, flat in (M, S) order: Bernoulli logits or the Gaussian mean (M = C, the image's own
    layout), or a discretized logistic's parameters.
    """

    kind = ""
    discrete_8bit = False  # a pmf over the 256 levels of every subpixel (bits per dimension apply)

    def __init__(self, decoder: nn.Module, shape: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.shape = shape

    @staticmethod
    def per_position(channels: int, spec: ModelSpec) -> int:
        """Parameters per image position for `channels` channels."""
        return channels

    def parameters_of(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., D_h) -> the decoder's parameters (..., M·S), float32 under autocast."""
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

    def __init__(self, decoder: nn.Module, std: float, shape: tuple[int, int, int] | None = None) -> None:
        super().__init__(decoder, shape)
        self.std = std

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(self.parameters_of(h), x, self.std)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.parameters_of(h)

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean = self.mean(h)
        return mean + self.std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


class DiscretizedLogisticLikelihood(Likelihood):
    """p(x|h) = Π_i DLogistic(x_i; μ_i, s_i) over the 256 levels of each subpixel (Kingma et al. 2016).

    The decoder gives (2, C, S): locations μ on the [-1, 1] scale of 2x - 1, then log-scales.
    """

    kind = "logistic"
    discrete_8bit = True

    @staticmethod
    def per_position(channels: int, spec: ModelSpec) -> int:
        return 2 * channels

    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.parameters_of(h)
        mean, log_scale = params.chunk(2, dim=-1)  # (..., C·S) each: the (2, C, S) layout
        return mean, log_scale

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return dist.discretized_logistic_log_prob(x, *self._split(h))

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return dist.discretized_logistic_mean(*self._split(h))

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return dist.discretized_logistic_sample(*self._split(h), generator=generator)


class DiscretizedLogisticMixtureLikelihood(Likelihood):
    """p(x|h) = Π_positions Σ_k π_k Π_c DLogistic(x_c; μ_kc + Σ_{c'<c} α_kcc' y_c', s_kc) (PixelCNN++).

    The decoder gives, per position, K mixture logits, K·C locations, K·C log-scales and K·C(C-1)/2
    channel coefficients, in that order ((M, S) layout, M = K(1 + 2C + C(C-1)/2)).
    """

    kind = "logistic-mixture"
    discrete_8bit = True

    def __init__(self, decoder: nn.Module, shape: tuple[int, int, int], components: int) -> None:
        super().__init__(decoder, shape)
        self.components = components

    @staticmethod
    def per_position(channels: int, spec: ModelSpec) -> int:
        return spec.mixture_components * (1 + 2 * channels + channels * (channels - 1) // 2)

    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        channels, height, width = self.shape  # type: ignore[misc]
        k, positions, pairs = self.components, height * width, channels * (channels - 1) // 2
        params = self.parameters_of(h)
        params = params.reshape(*params.shape[:-1], -1, positions)  # (..., M, S)
        sizes = (k, k * channels, k * channels, k * pairs)
        logits, means, log_scales, coeffs = params.split(sizes, dim=-2)
        batch = params.shape[:-2]
        return (
            logits,  # (..., K, S)
            means.reshape(*batch, k, channels, positions),
            log_scales.reshape(*batch, k, channels, positions),
            coeffs.reshape(*batch, k, pairs, positions),
        )

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.shape[0], -1)  # (..., C, S)

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return dist.discretized_logistic_mixture_log_prob(self._image(x), *self._split(h))

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        means = dist.discretized_logistic_mixture_mean(*self._split(h))
        return means.reshape(*means.shape[:-2], -1)

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        draws = dist.discretized_logistic_mixture_sample(*self._split(h), generator=generator)
        return draws.reshape(*draws.shape[:-2], -1)


LIKELIHOOD_CLASSES: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "logistic": DiscretizedLogisticLikelihood,
    "logistic-mixture": DiscretizedLogisticMixtureLikelihood,
}


def encoder_network(spec: ModelSpec, width: int, out_dim: int) -> GaussianNet:
    """q(z1|x)'s network next to the image: spec.network's encoder x (..., P) -> (mu, logvar) (..., out_dim)."""
    if spec.network == "mlp":
        return GaussianMLP(spec.input_dim, width, spec.depth, out_dim, spec.activation)
    residual = spec.network == "resnet"
    return GaussianNet(
        ConvEncoder(spec.shape, spec.channels, spec.depth, 2 * out_dim, spec.activation, residual), out_dim
    )


def build_likelihood(spec: ModelSpec, in_dim: int, width: int) -> Likelihood:
    """p(x|h) of `spec.likelihood` with spec.network's decoder h (..., in_dim) -> parameters (..., M·S).

    The MLP decoder is in_dim -> width x depth -> M·S, the MLP of the PyTorch example for Bernoulli.
    """
    shape = spec.shape
    channels = shape[0] if shape is not None else 1
    cls = LIKELIHOOD_CLASSES[spec.likelihood]
    if cls is DiscretizedLogisticMixtureLikelihood and shape is None:
        shape = (1, 1, spec.input_dim)  # a flat vector: one channel, P positions
    per_position = cls.per_position(channels, spec)
    if spec.network == "mlp":
        decoder: nn.Module = MLP(in_dim, width, spec.depth, spec.input_dim // channels * per_position, spec.activation)
    else:
        residual = spec.network == "resnet"
        decoder = ConvDecoder(in_dim, shape, spec.channels, spec.depth, per_position, spec.activation, residual)
    if cls is GaussianLikelihood:
        return GaussianLikelihood(decoder, spec.likelihood_std, shape)
    if cls is DiscretizedLogisticMixtureLikelihood:
        return DiscretizedLogisticMixtureLikelihood(decoder, shape, spec.mixture_components)
    return cls(decoder, shape)


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
