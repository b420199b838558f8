"""Estimators that need no gradients: the ELBO, importance-weighted bounds, Laplace evidence.

Every function takes a model and float pixels and returns plain numbers in nats per image.
"""

from __future__ import annotations

import torch

from vaelab.models import VAE
from vaelab.objectives import elbo_terms


@torch.no_grad()
def negative_elbo(
    model: VAE, x: torch.Tensor, *, seed: int = 0, device: torch.device | None = None, batch_size: int = 2000
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
        eps = torch.randn(batch.shape[0], model.config.latent_dim, generator=generator, device=device)
        logits, mu, logvar = model(batch, eps)
        reconstruction, kl = elbo_terms(logits, batch, mu, logvar)  # (b,), (b,)
        sums += torch.stack((reconstruction.sum(), kl.sum())).double()
    model.train(was_training)
    reconstruction_mean, kl_mean = (sums / x.shape[0]).tolist()
    return reconstruction_mean, kl_mean
