"""What every evaluator shares: the Estimate it returns, the streaming log-mean-exp, seeded noise.

Random draws never depend on how the work is chunked: the noise of image n, samples
[256 j, 256 (j + 1)), comes from its own generator seeded with (seed, stream, n, j). So L_k is
the same number whatever the batch size, the memory budget or the other k asked for.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from vaelab.errors import VaelabError
from vaelab.models.base import LatentVariableModel

DEFAULT_MAX_BYTES = 16 << 20  # working buffers of the IWAE pass; see `importance_weighted_evaluation`
NOISE_BLOCK = 256  # samples per seeded noise block
IWAE_STREAM, LAPLACE_STREAM = 1, 2


@dataclass(frozen=True)
class Estimate:
    """An average over images: mean and standard error (std over images / sqrt(n)) in nats per image, and its wall
    time."""

    mean: float
    stderr: float
    seconds: float

    @classmethod
    def from_values(cls, per_image: torch.Tensor, seconds: float) -> Estimate:
        """per_image (N,) nats -> mean, std(ddof=1)/sqrt(N) (nan when N = 1), in float64."""
        values = per_image.detach().double().cpu()
        n = values.numel()
        stderr = float(values.std(correction=1)) / math.sqrt(n) if n > 1 else math.nan
        return cls(float(values.mean()), stderr, seconds)


class PrefixLogMeanExp:
    """Running L_k = log (1/k) Σ_{i<k} w_i for each k in ks, fed log weights chunk by chunk along the samples.

    One float64 log-sum-exp per image is carried from chunk to chunk, so memory does not grow with k:
    the streaming form of `vaelab.distributions.log_mean_exp`, which training's IWAE objective uses
    (tests/test_evaluation.py holds the two equal).
    """

    def __init__(self, ks: Sequence[int], batch: int, device: torch.device | str = "cpu") -> None:
        self.ks = sorted(set(int(k) for k in ks))
        if not self.ks or self.ks[0] < 1:
            raise VaelabError(f"every k must be >= 1 (got {list(ks)})")
        self.total = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)  # log Σ w so far, (B,)
        self.count = 0
        self.bounds: dict[int, torch.Tensor] = {}

    def update(self, log_weights: torch.Tensor) -> None:
        """log_weights (B, c): the next c samples' log w of every image."""
        log_weights = log_weights.double()
        start, stop = self.count, self.count + log_weights.shape[1]
        for k in self.ks:
            if start < k <= stop:
                head = torch.logsumexp(log_weights[:, : k - start], dim=1)
                self.bounds[k] = torch.logaddexp(self.total, head) - math.log(k)
        self.total = torch.logaddexp(self.total, torch.logsumexp(log_weights, dim=1))
        self.count = stop


def iwae_from_log_weights(log_weights: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """L_k = log (1/k) Σ_{i<k} w_i from the first k of K draws: log_weights (K, B) -> {k: (B,) nats}, float64.

    Each L_k uses a prefix of the same draws, so it is still an unbiased estimate of E[L_k]
    (the first k of K i.i.d. draws are k i.i.d. draws); the L_k of one image are correlated.
    """
    if max(ks) > log_weights.shape[0]:
        raise VaelabError(f"k = {max(ks)} needs that many samples, got {log_weights.shape[0]}")
    accumulator = PrefixLogMeanExp(ks, log_weights.shape[1], log_weights.device)
    accumulator.update(log_weights.T)
    return accumulator.bounds


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


class Noise:
    """eps ~ N(0, I) for (image, sample) pairs, fixed by (seed, stream, image, sample) alone.

    Block j of image n is NOISE_BLOCK draws from a generator seeded by hashing (seed, stream, n, j);
    the last block of each image is kept, as consecutive chunks usually share one.
    """

    def __init__(self, seed: int, stream: int, dim: int, device: torch.device) -> None:
        self.seed, self.stream, self.dim = seed, stream, dim
        self.generator = torch.Generator()
        self.device = device
        self.cache: dict[int, tuple[int, torch.Tensor]] = {}

    def _block(self, image: int, block: int) -> torch.Tensor:
        cached = self.cache.get(image)
        if cached is not None and cached[0] == block:
            return cached[1]
        key = _splitmix64(_splitmix64(_splitmix64(_splitmix64(self.seed) ^ self.stream) ^ image) ^ block)
        self.generator.manual_seed(key)
        draws = torch.randn(NOISE_BLOCK, self.dim, generator=self.generator)
        self.cache[image] = (block, draws)
        return draws

    def draw(self, images: range, start: int, stop: int) -> torch.Tensor:
        """Samples [start, stop) of each image in `images` -> (len(images), stop - start, dim) float32."""
        rows = []
        for image in images:
            pieces = []
            for block in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
                offset = block * NOISE_BLOCK
                pieces.append(self._block(image, block)[max(start - offset, 0) : min(stop - offset, NOISE_BLOCK)])
            rows.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces))
        self.cache = {image: self.cache[image] for image in images}
        return torch.stack(rows).to(self.device)


def index_bernoulli(x: torch.Tensor, seed: int, stream: int, first_image: int, draw: int) -> torch.Tensor:
    """A Bernoulli draw of each row of x (n, P) in [0, 1], row i's seeded by (seed, stream, first_image + i, draw)
    alone: the same image gets the same draw whatever set or shard it is in."""
    uniforms = torch.empty(x.shape, dtype=torch.float32)
    generator = torch.Generator()
    for row in range(x.shape[0]):
        key = _splitmix64(_splitmix64(_splitmix64(_splitmix64(seed) ^ stream) ^ (first_image + row)) ^ draw)
        generator.manual_seed(key)
        uniforms[row] = torch.rand(x.shape[1], generator=generator)
    return (uniforms.to(x.device) < x).to(x.dtype)


def iwae_noise(seed: int, n_images: int, k: int, dim: int) -> torch.Tensor:
    """The eps that `importance_weighted_evaluation(seed=seed)` uses: (n_images, k, dim), z_i = mu + sigma·eps_i."""
    return Noise(seed, IWAE_STREAM, dim, torch.device("cpu")).draw(range(n_images), 0, k)


def model_on(model: LatentVariableModel, device: torch.device) -> LatentVariableModel:
    """The model itself if it lives on `device`, else a copy there (the caller's model stays where it is)."""
    if next(model.parameters()).device == device:
        return model
    return copy.deepcopy(model).to(device)
