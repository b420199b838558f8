"""Active units and the one-sample -ELBO that training reports after each epoch."""

from __future__ import annotations

import torch

from vaelab.errors import VaelabError
from vaelab.models.base import LatentVariableModel
from vaelab.objectives import elbo


@torch.no_grad()
def active_units(
    model: LatentVariableModel, x: torch.Tensor, threshold: float = 0.01, *, batch_size: int = 2000
) -> tuple[int, torch.Tensor]:
    """A_u = Cov_x(E_q[z_u]) = Var over images of the posterior mean (Burda et al. 2015).

    x (N, P) -> (count of u with A_u > threshold, A (D,) float64); with two stochastic layers
    u runs over the joint latent (z1, z2), E_q[z2] taken at z1 = E_q[z1].
    """
    if x.shape[0] < 2:
        raise VaelabError("active units need at least 2 images (a variance over images)")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    means = torch.cat(
        [
            model.posterior(x[start : start + batch_size].to(device, dtype)).mean.double().cpu()
            for start in range(0, x.shape[0], batch_size)
        ]
    )
    variances = means.var(dim=0, correction=1)
    return int((variances > threshold).sum()), variances


@torch.no_grad()
def negative_elbo(
    model: LatentVariableModel,
    x: torch.Tensor,
    *,
    seed: int = 0,
    device: torch.device | None = None,
    batch_size: int = 2000,
) -> tuple[float, float]:
    """One-sample estimate of -ELBO's two terms averaged over x (N, P): (reconstruction, KL) nats.

    The noise comes from a generator seeded with `seed`, so repeated calls give the same value
    and the caller's random streams are left untouched.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].to(device)  # (b, P)
        eps = torch.randn(1, batch.shape[0], model.latent_dim, generator=generator, device=device)
        terms = elbo(model, batch, eps)  # (b,) each
        sums += torch.stack((terms.reconstruction.sum(), terms.kl.sum())).double()
    model.train(was_training)
    reconstruction_mean, kl_mean = (sums / x.shape[0]).tolist()
    return reconstruction_mean, kl_mean
