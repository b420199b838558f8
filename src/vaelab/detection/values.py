"""Per-image values a model gives for detection: importance-weighted bounds, the bound above the first layer,
and the ELBO after a per-image refit of q. Torch in, float64 NumPy (N,) nats out, in input order.

Every draw is seeded by the image's index in the whole set (`first_image` + its row, `common.Noise`), so an
image's value does not depend on the batch or shard it is computed in.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vaelab.errors import VaelabError
from vaelab.evaluation.common import Noise
from vaelab.evaluation.iwae import importance_weighted_evaluation
from vaelab.models.base import DiagonalGaussian, LatentVariableModel
from vaelab.models.hierarchical import TwoLayerVAE


LLR_STREAM, REGRET_STREAM = 4, 5  # noise streams beside IWAE's (1), Laplace-IS's (2) and encode's (3)


def bounds(
    model: LatentVariableModel, x: torch.Tensor, k: int, seed: int, first_image: int = 0
) -> dict[str, np.ndarray]:
    """{"L_k": L_k, "log_likelihood": E_q log p(x|z), "kl": KL(q || p)}, each (N,) nats, for x (N, P)."""
    result = importance_weighted_evaluation(model, x, [k], seed=seed, first_image=first_image)
    per_image = result.per_image
    return {
        "L_k": per_image[f"L_{k}"].numpy(),
        "log_likelihood": per_image["log_likelihood"].numpy(),
        "kl": per_image["kl"].numpy(),
    }


@torch.no_grad()
def bound_above_first_layer(
    model: LatentVariableModel, x: torch.Tensor, k: int, seed: int, batch_size: int = 256, first_image: int = 0
) -> np.ndarray:
    """L^{>1}_k = log (1/k) Σ_i p(x|z1_i) p(z2_i) / q(z2_i|x), z2_i ~ q(z2|x), z1_i ~ p(z1|z2_i): (N,) nats.

    Havtorn et al. (2021), eq. 8 with the first layer drawn from its conditional prior (p(z1|z2) cancels).
    q(z2|x) is taken along the deterministic bottom-up path, q(z2 | E[z1|x]).
    """
    if not isinstance(model, TwoLayerVAE):
        raise VaelabError(
            "the likelihood ratio LLR>1 needs a model with two stochastic layers; "
            "train one with --preset burda-two-layer, or choose another statistic"
        )
    noise = Noise(seed, LLR_STREAM, model.latent_dim, torch.device("cpu"))
    dtype = next(model.parameters()).dtype
    components = model.prior_components()
    out = np.empty(x.shape[0])
    for first in range(0, x.shape[0], batch_size):
        batch = x[first : first + batch_size].to(dtype)  # (B, P)
        top = model.top_posterior(batch)
        images = range(first_image + first, first_image + first + batch.shape[0])
        eps = noise.draw(images, 0, k).to(dtype).transpose(0, 1)  # (k, B, D1 + D2): z1's first, z2's after
        z2 = top.rsample(eps[..., model.d1 :])
        conditional = model.conditional_prior(z2)
        z1 = conditional.rsample(eps[..., : model.d1])  # (k, B, D1)
        log_w = model.likelihood.log_prob(batch, z1) + model.log_top_prior(z2, components) - top.log_prob(z2)
        out[first : first + batch.shape[0]] = (torch.logsumexp(log_w.double(), dim=0) - math.log(k)).numpy()
    return out


def refit_elbo(
    model: LatentVariableModel,
    x: torch.Tensor,
    *,
    steps: int = 20,
    lr: float = 0.1,
    samples: int = 8,
    seed: int = 0,
    batch_size: int = 256,
    first_image: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(ELBO with the amortized q, ELBO with q refitted to each image) (N,) nats each, for x (N, P).

    Likelihood Regret (Xiao et al. 2020) refits the encoder to each image; here each image's own diagonal
    Gaussian (mu, log σ²) over the whole latent is refitted by `steps` Adam steps on the ELBO from the
    amortized posterior's moments, all images of a batch at once. Both ELBOs use the same `samples` draws.
    """
    noise = Noise(seed, REGRET_STREAM, model.latent_dim, torch.device("cpu"))
    dtype = next(model.parameters()).dtype
    elbo, elbo_refit = np.empty(x.shape[0]), np.empty(x.shape[0])
    for first in range(0, x.shape[0], batch_size):
        batch = x[first : first + batch_size].to(dtype)  # (B, P)
        images = range(first_image + first, first_image + first + batch.shape[0])
        eps = noise.draw(images, 0, samples).to(dtype).transpose(0, 1)  # (S, B, D)
        with torch.no_grad():
            posterior = model.posterior(batch)
            z = posterior.rsample(eps)  # (S, B, D)
            amortized = (model.log_joint(batch, z) - posterior.log_prob(z)).mean(0)
            if isinstance(posterior, DiagonalGaussian):
                mu, logvar = posterior.mu.clone(), posterior.logvar.clone()
            else:  # the moments of the draws: a diagonal Gaussian to start from
                mu, logvar = z.mean(0), torch.log(z.var(0) + 1e-6)
        mu.requires_grad_(True)
        logvar.requires_grad_(True)
        optimizer = torch.optim.Adam([mu, logvar], lr=lr)
        best = amortized.clone()
        for _ in range(steps):
            with torch.enable_grad():
                q = DiagonalGaussian(mu, logvar)
                z = q.rsample(eps)
                per_image = (model.log_joint(batch, z) - q.log_prob(z)).mean(0)  # (B,)
                optimizer.zero_grad()
                (-per_image.sum()).backward()
                optimizer.step()
            best = torch.maximum(best, per_image.detach())
        with torch.no_grad():
            q = DiagonalGaussian(mu, logvar)
            z = q.rsample(eps)
            best = torch.maximum(best, (model.log_joint(batch, z) - q.log_prob(z)).mean(0))
        elbo[first : first + batch.shape[0]] = amortized.double().numpy()
        elbo_refit[first : first + batch.shape[0]] = best.double().numpy()
    for parameter in model.parameters():
        parameter.grad = None
    return elbo, elbo_refit
