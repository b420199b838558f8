"""What a trained model says of each image: its latent code, its reconstruction, its log-likelihood.

Each function maps a block of images x (n, P), the images first_image .. first_image + n of a set, to
per-image tensors (n, ...) in input order, the shape `vaelab.evaluation.runner` shards, resumes and
merges. Noise is drawn by image index (`common.Noise`), so a value never depends on the block it was
computed in.

    encode_block(model, x, first, samples, seed)   mean_<l>, logvar_<l> (n, D_l) per layer l = 1, 2; z (n, S, D)
    reconstruct_block(model, x)                      mean (n, P): E[x|z] at z = E_q[z|x]
    score_block(model, x, first, plan, device)       L_<k>, elbo, reconstruction, kl (n,) nats, + Laplace
"""

from __future__ import annotations

import torch

from vaelab.evaluation.common import Noise
from vaelab.evaluation.shards import ShardPlan, evaluate_shard
from vaelab.models.base import LatentVariableModel

ENCODE_STREAM = 3  # the noise of encode's posterior draws; IWAE and Laplace-IS use streams 1 and 2
BLOCK_IMAGES = 256  # images per forward pass of encode and reconstruct: bounds the activations' memory


@torch.no_grad()
def encode_block(
    model: LatentVariableModel, x: torch.Tensor, first_image: int = 0, samples: int = 0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """q(z|x) of each image x (n, P): "mean_1", "logvar_1" (n, D1) (and "mean_2", "logvar_2" of q(z2|z1) at
    z1 = E[z1] for two layers); with samples S > 0, "z" (n, S, D): draws z ~ q(z|x), seeded by image index."""
    model = model.eval()
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    noise = Noise(seed, ENCODE_STREAM, model.latent_dim, device) if samples else None
    for start in range(0, x.shape[0], BLOCK_IMAGES):
        block = x[start : start + BLOCK_IMAGES].to(device, dtype)
        posterior = model.posterior(block)
        for layer, (mean, logvar) in enumerate(posterior.layer_moments(), start=1):
            parts.setdefault(f"mean_{layer}", []).append(mean)
            parts.setdefault(f"logvar_{layer}", []).append(logvar)
        if noise is not None:
            images = range(first_image + start, first_image + start + block.shape[0])
            eps = noise.draw(images, 0, samples).to(dtype)  # (b, S, D)
            parts.setdefault("z", []).append(posterior.rsample(eps.transpose(0, 1)).transpose(0, 1))
    return {name: torch.cat(values).cpu() for name, values in parts.items()}


@torch.no_grad()
def reconstruct_block(model: LatentVariableModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """ "mean" (n, P): the decoder's mean E[x|z] at the posterior mean z = E_q[z|x] of each image x (n, P)."""
    model = model.eval()
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    means = [
        model.mean_image(model.posterior(x[start : start + BLOCK_IMAGES].to(device, dtype)).mean)
        for start in range(0, x.shape[0], BLOCK_IMAGES)
    ]
    return {"mean": torch.cat(means).cpu()}


def score_block(
    model: LatentVariableModel, x: torch.Tensor, first_image: int, plan: ShardPlan, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per image x (n, P), in nats: "L_<k>" for each k of the plan (k = 1 is the ELBO with sampled
    reconstruction), "elbo" = E_q log p(x|z) - KL over max(k) draws, "reconstruction" = -E_q log p(x|z),
    "kl"; with Laplace, "laplace" and "laplace_is"; plus evaluate's seconds and counts. The same numbers
    `vaelab evaluate` averages for the same images, seed and ks."""
    values = evaluate_shard(model, x, first_image, plan, device)
    values["elbo"] = values["log_likelihood"] - values["kl"]
    values["reconstruction"] = -values.pop("log_likelihood")
    return values
