"""Importance-weighted bounds L_k (Burda et al. 2015) on log p(x), in nats per image, for any model.

One draw of k_max = max(ks) samples per image; L_k uses its first k. Images are encoded once;
the samples go through the decoder in chunks whose buffers take at most `max_bytes`, with a
running float64 log-sum-exp across chunks. log p(x|z) goes through the fused Bernoulli decoder
kernel where it serves the model (vaelab.kernels), through the model itself otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm import tqdm

from vaelab.errors import VaelabError
from vaelab.evaluation.common import (
    DEFAULT_MAX_BYTES,
    IWAE_STREAM,
    NOISE_BLOCK,
    Estimate,
    Noise,
    PrefixLogMeanExp,
    model_on,
)
from vaelab.kernels import evaluation_decoder
from vaelab.config import ModelSpec
from vaelab.models.base import LatentVariableModel
from vaelab.nn import level_channels, resolutions


def layout(n_images: int, k_max: int, batch_size: int, max_bytes: int, model: LatentVariableModel) -> tuple[int, int]:
    """Images per batch b and samples per chunk c so that the (c·b, ...) working tensors fit in max_bytes."""
    spec = model.spec
    row_floats = spec.hidden[0] + spec.input_dim + 3 * spec.latent_dim
    row_floats += spec.pseudo_inputs if spec.prior == "vamp" else 0  # the (rows, K) mixture terms
    row_floats += 2 * sum(spec.hidden[1:])  # q(z2|z1) and p(z1|z2) with two layers
    row_floats += decoder_activation_floats(spec)
    rows = max(1, max_bytes // (4 * row_floats))
    if batch_size:
        images = batch_size
    else:
        # All k_max samples of several images per chunk while they fit; else 4 images (fewer for a
        # small budget) with chunks of >= NOISE_BLOCK samples, so that the Python cost of a chunk
        # stays small next to its matmul.
        images = max(1, rows // k_max) if k_max <= rows else max(1, rows // max(NOISE_BLOCK, rows // 4))
    images = min(images, n_images)
    return images, max(1, rows // images)


def decoder_activation_floats(spec: ModelSpec) -> int:
    """Floats a convolutional decoder holds per latent row beyond the MLP's: its feature maps at every level
    (a few live at once per block) and its per-position parameters; 0 for an MLP."""
    if spec.network == "mlp":
        return 0
    channels, height, width = spec.shape
    sizes = resolutions(height, width)
    levels = sizes[1:] or sizes
    maps = sum(c * h * w for c, (h, w) in zip(level_channels(spec.channels, len(levels)), levels))
    parameters = 2 * channels * height * width * max(1, spec.mixture_components if "mixture" in spec.likelihood else 1)
    return (3 + 2 * spec.depth) * maps + spec.channels * height * width + 4 * parameters


class LogWeights:
    """log p(x|z) and log p(z) for c draws of each of b images, z (b, c, D): (b, c) float64 nats.

    The model's dtype is kept (float64 models are evaluated in float64); the fused decoder
    kernel serves float32 Bernoulli models. What the prior needs from the model (a VampPrior's
    components) is computed once.
    """

    def __init__(self, model: LatentVariableModel, rows: int, device: torch.device) -> None:
        self.model, self.device = model, device
        self.dtype = next(model.parameters()).dtype
        kernel = evaluation_decoder(model) if self.dtype == torch.float32 else None
        self.decoder = kernel(model, rows, device) if kernel is not None else None
        self.components = model.prior_components()

    @property
    def buffer_bytes(self) -> int:
        return self.decoder.buffer_bytes if self.decoder is not None else 0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Take the next batch x (b, P); return it on the device in the model's dtype."""
        self.x = x.to(self.device, self.dtype)
        if self.decoder is not None:
            self.xw, self.xb = self.decoder.data_terms(self.x)
        return self.x

    def log_likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for the prepared batch: z (b, c, D) -> (b, c)."""
        z = z.to(self.dtype)
        if self.decoder is not None:
            return self.decoder.log_likelihood(self.model.decoder_input(z), self.xw, self.xb).double()
        return self.model.log_likelihood(self.x, z.transpose(0, 1)).T.double()

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z): z (b, c, D) -> (b, c)."""
        return self.model.log_prior(z.to(self.dtype), self.components).double()


@dataclass(frozen=True)
class IWAEResult:
    """What `importance_weighted_evaluation` returns; every Estimate is in nats per image."""

    bounds: dict[int, Estimate]  # L_k, an estimate of a lower bound on log p(x)
    elbo: Estimate  # E_q[log p(x|z)] (mean over the k_max draws) - KL
    reconstruction: Estimate  # -E_q[log p(x|z)]
    kl: Estimate  # KL(q(z|x) || p(z)): analytic where the model has it, else the k_max-sample mean
    images_per_batch: int
    samples_per_chunk: int
    buffer_bytes: int  # the working buffers' size, independent of N and k
    per_image: dict[str, torch.Tensor] | None = None  # "L_k" (N,) for each k, "log_likelihood" and "kl", float64


@torch.no_grad()
def importance_weighted_evaluation(
    model: LatentVariableModel,
    x: torch.Tensor,
    ks: Sequence[int],
    *,
    seed: int = 0,
    batch_size: int = 0,
    device: torch.device | str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: bool = False,
    first_image: int = 0,
) -> IWAEResult:
    """L_k = log (1/k) Σ_{i≤k} p(x, z_i)/q(z_i|x), z_i ~ q(z|x), for every k in ks, over x (N, P); nats per image.

    `batch_size` images per batch (0: chosen from max_bytes). Each bound's `seconds` is the
    measured time of the encoder and of samples 1..k only. `progress` shows a bar with the time left.
    x's image i is image `first_image + i` of a larger set: its noise is that image's, so the set's
    shards, evaluated apart (a resumed run, the ranks of torchrun), give each image the values that
    one pass over the whole set gives it.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise VaelabError(f"every k must be >= 1 (got {list(ks)})")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model_on(model, device)
    n_images, k_max = x.shape[0], ks[-1]
    if n_images == 0:
        raise VaelabError("no images to evaluate; check --size and the split")
    images, samples = layout(n_images, k_max, batch_size, max_bytes, model)
    weights = LogWeights(model, images * samples, device)
    noise = Noise(seed, IWAE_STREAM, model.latent_dim, device)
    bounds = {k: torch.empty(n_images, dtype=torch.float64) for k in ks}
    log_likelihood_mean = torch.empty(n_images, dtype=torch.float64)
    kl = torch.empty(n_images, dtype=torch.float64)
    seconds = dict.fromkeys(ks, 0.0)
    boundaries = [0, *ks]
    bar = tqdm(total=n_images, desc=f"IWAE k={k_max}", unit="image", disable=not progress, leave=False, mininterval=1.0)

    for first in range(0, n_images, images):
        # --- encode the batch once ------------------------------------------------------------
        started = time.perf_counter()
        index = range(first, min(first + images, n_images))
        batch = weights.prepare(x[index.start : index.stop])  # (b, P)
        posterior = model.posterior(batch)
        analytic_kl = model.analytic_kl(posterior)
        log_likelihood_sum = torch.zeros(len(index), dtype=torch.float64, device=device)
        log_q_over_prior_sum = torch.zeros(len(index), dtype=torch.float64, device=device)
        accumulator = PrefixLogMeanExp(ks, len(index), device)
        shared = time.perf_counter() - started
        for k in ks:
            seconds[k] += shared
        # --- samples, segment by segment between consecutive k, chunk by chunk -----------------
        elapsed = 0.0
        for segment_start, segment_stop in zip(boundaries[:-1], boundaries[1:]):
            started = time.perf_counter()
            for start in range(segment_start, segment_stop, samples):
                stop = min(start + samples, segment_stop)
                eps = noise.draw(_shifted(index, first_image), start, stop).to(weights.dtype)  # (b, c, D)
                z_samples_first = posterior.rsample(eps.transpose(0, 1))  # (c, b, D)
                z = z_samples_first.transpose(0, 1)  # (b, c, D)
                log_px_given_z = weights.log_likelihood(z)  # (b, c)
                log_q = posterior.log_prob(z_samples_first).T.double()  # (b, c)
                log_q_over_prior = log_q - weights.log_prior(z)
                accumulator.update(log_px_given_z - log_q_over_prior)
                log_likelihood_sum += log_px_given_z.sum(dim=1)
                log_q_over_prior_sum += log_q_over_prior.sum(dim=1)
            elapsed += time.perf_counter() - started
            seconds[segment_stop] += elapsed
        for k in ks:
            bounds[k][first : index.stop] = accumulator.bounds[k].cpu()
        log_likelihood_mean[first : index.stop] = (log_likelihood_sum / k_max).cpu()
        kl[first : index.stop] = (
            analytic_kl.double() if analytic_kl is not None else log_q_over_prior_sum / k_max
        ).cpu()
        bar.update(len(index))
    bar.close()

    total = seconds[k_max]
    bytes_used = weights.buffer_bytes + 3 * images * samples * model.latent_dim * 4
    return IWAEResult(
        bounds={k: Estimate.from_values(bounds[k], seconds[k]) for k in ks},
        elbo=Estimate.from_values(log_likelihood_mean - kl, total),
        reconstruction=Estimate.from_values(-log_likelihood_mean, total),
        kl=Estimate.from_values(kl, total),
        images_per_batch=images,
        samples_per_chunk=samples,
        buffer_bytes=bytes_used,
        per_image={**{f"L_{k}": bounds[k] for k in ks}, "log_likelihood": log_likelihood_mean, "kl": kl},
    )


def _shifted(index: range, offset: int) -> range:
    """Image indices of a shard within the whole set."""
    return range(index.start + offset, index.stop + offset)


def importance_weighted_bounds(
    model: LatentVariableModel, x: torch.Tensor, ks: Sequence[int], **options: Any
) -> dict[int, Estimate]:
    """{k: L_k} in nats per image over x (N, P): `importance_weighted_evaluation`'s bounds alone (same options)."""
    return importance_weighted_evaluation(model, x, ks, **options).bounds
