"""Estimators that need no gradients: the ELBO, importance-weighted bounds, Laplace evidence.

Every model-level function takes a model and float pixels x (N, P) and returns plain numbers in
nats per image; docs/evaluation.md derives each estimator. The maths cores take tensors or
callables (`iwae_from_log_weights`, `newton_mode`, `laplace_proposal`), so they are tested on a
linear-Gaussian model whose log p(x) is exact.

Random draws never depend on how the work is chunked: the noise of image n, samples
[256 j, 256 (j + 1)), comes from its own generator seeded with (seed, stream, n, j). So L_k is
the same number whatever the batch size, the memory budget or the other k asked for.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.func import grad_and_value, jacrev, vmap

from vaelab.errors import VaelabError
from vaelab.laplace import gaussian_log_evidence
from vaelab.models import VAE
from vaelab.objectives import LOG_2PI, elbo_terms, gaussian_kl

DEFAULT_MAX_BYTES = 16 << 20  # working buffers of the IWAE pass; see `importance_weighted_evaluation`
NOISE_BLOCK = 256  # samples per seeded noise block
_IWAE_STREAM, _LAPLACE_STREAM = 1, 2


@dataclass(frozen=True)
class Estimate:
    """An average over images: mean and standard error (std over images / sqrt(n)) in nats per image, and its wall time."""

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


# --------------------------------------------------------------------------------------------
# Importance-weighted bounds (Burda et al. 2015)
# --------------------------------------------------------------------------------------------


class PrefixLogMeanExp:
    """Running L_k = log (1/k) Σ_{i<k} w_i for each k in ks, fed log weights chunk by chunk along the samples.

    One float64 log-sum-exp per image is carried from chunk to chunk, so memory does not grow with k.
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


class _Noise:
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


def iwae_noise(seed: int, n_images: int, k: int, dim: int) -> torch.Tensor:
    """The eps that `importance_weighted_evaluation(seed=seed)` uses: (n_images, k, dim), z_i = mu + sigma·eps_i."""
    return _Noise(seed, _IWAE_STREAM, dim, torch.device("cpu")).draw(range(n_images), 0, k)


class _BernoulliDecoder:
    """log p(x|z) for the VAE's decoder, logits = fc4(relu(fc3 z)), many z per image, in reused buffers.

    Σ_i x_i l_i = h·(W4ᵀx) + b4·x with h = relu(fc3 z), so the data term is a (b, c, H) x (b, H)
    product and the only elementwise pass over the (c·b, P) logits is Σ_i softplus(l_i).
    """

    def __init__(self, model: VAE, rows: int, device: torch.device) -> None:
        self.w3t = model.fc3.weight.detach().to(device, torch.float32).T.contiguous()  # (D, H)
        self.b3 = model.fc3.bias.detach().to(device, torch.float32)
        self.w4 = model.fc4.weight.detach().to(device, torch.float32).contiguous()  # (P, H)
        self.w4t = self.w4.T.contiguous()  # (H, P)
        self.b4 = model.fc4.bias.detach().to(device, torch.float32)
        self.hidden = torch.empty(rows, self.w3t.shape[1], device=device)
        self.logits = torch.empty(rows, self.w4.shape[0], device=device)
        self.zero = torch.zeros((), device=device)

    def data_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, P) -> W4ᵀx (b, H) and b4·x (b,)."""
        return x @ self.w4, x @ self.b4

    def log_likelihood(self, z: torch.Tensor, xw: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """z (b, c, D) -> log p(x|z) = Σ_i x_i l_i - softplus(l_i), (b, c) nats."""
        b, c, d = z.shape
        rows = b * c
        hidden = self.hidden[:rows]
        torch.addmm(self.b3, z.reshape(rows, d), self.w3t, out=hidden).relu_()
        logits = self.logits[:rows]
        torch.addmm(self.b4, hidden, self.w4t, out=logits)
        data_term = torch.bmm(hidden.view(b, c, -1), xw.unsqueeze(2)).squeeze(2) + xb.unsqueeze(1)  # (b, c)
        torch.logaddexp(logits, self.zero, out=logits)  # softplus in place: log(1 + e^l), stable both ways
        return data_term - logits.sum(dim=1).view(b, c)


def _layout(n_images: int, k_max: int, batch_size: int, max_bytes: int, model: VAE) -> tuple[int, int]:
    """Images per batch b and samples per chunk c so that the (c·b, H + P) buffers fit in max_bytes."""
    hidden, pixels, latent = model.config.hidden, model.config.input_dim, model.config.latent_dim
    rows = max(1, max_bytes // (4 * (hidden + pixels + 3 * latent)))
    if batch_size:
        images = batch_size
    else:
        # All k_max samples of several images per chunk while they fit; else 4 images (fewer for a
        # small budget) with chunks of >= NOISE_BLOCK samples, so that the Python cost of a chunk
        # stays small next to its matmul.
        images = max(1, rows // k_max) if k_max <= rows else max(1, rows // max(NOISE_BLOCK, rows // 4))
    images = min(images, n_images)
    return images, max(1, rows // images)


@dataclass(frozen=True)
class IWAEResult:
    """What `importance_weighted_evaluation` returns; every Estimate is in nats per image."""

    bounds: dict[int, Estimate]  # L_k, an estimate of a lower bound on log p(x)
    elbo: Estimate  # E_q[log p(x|z)] (mean over the k_max draws) - KL (analytic)
    reconstruction: Estimate  # -E_q[log p(x|z)]
    kl: Estimate  # KL(q(z|x) || p(z)), analytic
    images_per_batch: int
    samples_per_chunk: int
    buffer_bytes: int  # the working buffers' size, independent of N and k


@torch.no_grad()
def importance_weighted_evaluation(
    model: VAE,
    x: torch.Tensor,
    ks: Sequence[int],
    *,
    seed: int = 0,
    batch_size: int = 0,
    device: torch.device | str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> IWAEResult:
    """L_k = log (1/k) Σ_{i≤k} p(x, z_i)/q(z_i|x), z_i ~ q(z|x), for every k in ks, over x (N, P); nats per image.

    One draw of k_max = max(ks) samples per image; L_k uses its first k. Images are encoded once;
    the samples go through the decoder in chunks whose hidden and logit buffers take at most
    `max_bytes` (plus c·b·D noise), with a running float64 log-sum-exp across chunks.
    `batch_size` images per batch (0: chosen from max_bytes). Each bound's `seconds` is the
    measured time of the encoder and of samples 1..k only.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise VaelabError(f"every k must be >= 1 (got {list(ks)})")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n_images, k_max = x.shape[0], ks[-1]
    if n_images == 0:
        raise VaelabError("no images to evaluate; check --size and the split")
    images, samples = _layout(n_images, k_max, batch_size, max_bytes, model)
    decoder = _BernoulliDecoder(model, images * samples, device)
    noise = _Noise(seed, _IWAE_STREAM, model.config.latent_dim, device)
    encoder = _encoder_on(model, device)
    bounds = {k: torch.empty(n_images, dtype=torch.float64) for k in ks}
    log_likelihood_mean = torch.empty(n_images, dtype=torch.float64)
    kl = torch.empty(n_images, dtype=torch.float64)
    seconds = dict.fromkeys(ks, 0.0)
    boundaries = [0, *ks]

    for first in range(0, n_images, images):
        # --- encode the batch once ------------------------------------------------------------
        started = time.perf_counter()
        index = range(first, min(first + images, n_images))
        batch = x[index.start : index.stop].to(device, torch.float32)  # (b, P)
        mu, logvar = encoder(batch)  # (b, D) each
        sigma = torch.exp(0.5 * logvar)
        # log p(z) - log q(z|x) = -½|z|² + ½|eps|² + ½ Σ logvar for z = mu + sigma·eps.
        half_log_det = 0.5 * logvar.sum(dim=1, keepdim=True)  # (b, 1)
        xw, xb = decoder.data_terms(batch)
        kl[first : index.stop] = gaussian_kl(mu, logvar).double().cpu()
        log_likelihood_sum = torch.zeros(len(index), dtype=torch.float64, device=device)
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
                eps = noise.draw(index, start, stop)  # (b, c, D)
                z = torch.addcmul(mu.unsqueeze(1), sigma.unsqueeze(1), eps)  # (b, c, D)
                log_px_given_z = decoder.log_likelihood(z, xw, xb)  # (b, c)
                log_prior_over_q = 0.5 * (eps.square().sum(-1) - z.square().sum(-1)) + half_log_det  # (b, c)
                accumulator.update(log_px_given_z.double() + log_prior_over_q.double())
                log_likelihood_sum += log_px_given_z.sum(dim=1, dtype=torch.float64)
            elapsed += time.perf_counter() - started
            seconds[segment_stop] += elapsed
        for k in ks:
            bounds[k][first : index.stop] = accumulator.bounds[k].cpu()
        log_likelihood_mean[first : index.stop] = (log_likelihood_sum / k_max).cpu()

    total = seconds[k_max]
    bytes_used = decoder.hidden.nbytes + decoder.logits.nbytes + 3 * images * samples * model.config.latent_dim * 4
    return IWAEResult(
        bounds={k: Estimate.from_values(bounds[k], seconds[k]) for k in ks},
        elbo=Estimate.from_values(log_likelihood_mean - kl, total),
        reconstruction=Estimate.from_values(-log_likelihood_mean, total),
        kl=Estimate.from_values(kl, total),
        images_per_batch=images,
        samples_per_chunk=samples,
        buffer_bytes=bytes_used,
    )


def importance_weighted_bounds(
    model: VAE,
    x: torch.Tensor,
    ks: Sequence[int],
    *,
    seed: int = 0,
    batch_size: int = 0,
    device: torch.device | str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[int, Estimate]:
    """{k: L_k} in nats per image over x (N, P): `importance_weighted_evaluation`'s bounds alone."""
    return importance_weighted_evaluation(model, x, ks, seed=seed, batch_size=batch_size, device=device, max_bytes=max_bytes).bounds


def _encoder_on(model: VAE, device: torch.device) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """model.encode in float32 on `device`, leaving the caller's model where it is."""
    if next(model.parameters()).device == device:
        return model.encode
    copy = VAE(model.config).to(device)
    copy.load_state_dict(model.state_dict())
    return copy.encode


# --------------------------------------------------------------------------------------------
# Laplace's method in latent space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """What `newton_mode` finds for each of B problems."""

    z: torch.Tensor  # (B, d) the maximiser z*
    log_peak: torch.Tensor  # (B,) log_joint(z*), nats
    neg_hessian: torch.Tensor  # (B, d, d) -∇² log_joint at z*
    converged: torch.Tensor  # (B,) bool: the Newton decrement fell below tol
    iterations: int  # Newton iterations of the slowest problem


def newton_mode(
    log_joint: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    data: torch.Tensor,
    *,
    max_iter: int = 50,
    tol: float = 1e-9,
    min_gain: float = 1e-4,
    max_halvings: int = 30,
) -> Mode:
    """z* = argmax_z log_joint(z, data[b]) for each b, by batched Newton from z0 (B, d), float64.

    log_joint(z (d,), data_b) -> () nats, written with torch functions; gradient and exact Hessian
    come from torch.func (reverse over reverse, vmapped over b). Each step solves (-H + λI) s = g
    (λ > 0 only where -H is not positive definite) and backtracks until Armijo's ascent holds.
    A problem stops when ½ gᵀs < tol nats (converged), or, not converged, when a shortened step gains
    less than min_gain nats or no step of length ≥ 2^-max_halvings ascends: Newton zig-zags over the
    ridges where a ReLU decoder's units switch, and z* is then the best point found.
    """
    z = z0.detach().to(torch.float64).clone()
    data = data.detach().to(torch.float64)
    batch, dim = z.shape

    def gradient_and_value(point: torch.Tensor, item: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        gradient, value = grad_and_value(log_joint)(point, item)
        return gradient, (gradient, value)

    derivatives = vmap(jacrev(gradient_and_value, has_aux=True))
    values = vmap(log_joint)
    options = {"dtype": torch.float64, "device": z.device}
    log_peak = torch.empty(batch, **options)
    neg_hessian = torch.empty(batch, dim, dim, **options)
    converged = torch.zeros(batch, dtype=torch.bool, device=z.device)
    active = torch.arange(batch, device=z.device)
    finishing = torch.zeros(batch, dtype=torch.bool, device=z.device)  # stop once their new point is evaluated
    iterations = 0
    for iteration in range(max_iter + 1):
        if active.numel() == 0:
            break
        iterations = iteration
        hessian, (gradient, value) = derivatives(z[active], data[active])
        if not bool(torch.isfinite(value).all() and torch.isfinite(hessian).all()):
            raise VaelabError("log p(x, z) or its Hessian is not finite during the Newton search; check the model's weights")
        log_peak[active] = value
        neg_hessian[active] = -0.5 * (hessian + hessian.mT)
        if iteration == max_iter:
            break
        step = _damped_newton_step(neg_hessian[active], gradient)  # (b, d)
        decrement = (gradient * step).sum(-1)  # gᵀs ≈ 2 (f(z*) - f(z)) near the mode
        done = decrement <= 2 * tol
        converged[active[done]] = True
        moving = ~done & ~finishing[active]
        active, step, value, decrement = active[moving], step[moving], value[moving], decrement[moving]
        # --- backtracking: halve each problem's step until f rises by Armijo's margin -----------
        length = torch.ones(active.numel(), **options)
        accepted = torch.zeros(active.numel(), dtype=torch.bool, device=z.device)
        gain = torch.zeros(active.numel(), **options)
        for _ in range(max_halvings + 1):
            trying = (~accepted).nonzero().squeeze(1)
            if trying.numel() == 0:
                break
            candidate = z[active[trying]] + length[trying, None] * step[trying]
            candidate_value = values(candidate, data[active[trying]])
            rises = candidate_value >= value[trying] + 1e-4 * length[trying] * decrement[trying]
            z[active[trying[rises]]] = candidate[rises]
            gain[trying[rises]] = candidate_value[rises] - value[trying[rises]]
            accepted[trying[rises]] = True
            length[trying[~rises]] *= 0.5
        # Where no step ascends, or backtracking was needed and the ascent has dwindled (zig-zagging
        # over a ridge where ReLU units switch), z is as good as Newton gets: stop there. Full steps
        # go on: that is Newton's quadratic convergence, whatever the gain.
        finishing[active] = (length < 1.0) & (gain < min_gain)
        active = active[accepted]
    return Mode(z=z, log_peak=log_peak, neg_hessian=neg_hessian, converged=converged, iterations=iterations)


def _damped_newton_step(neg_hessian: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """s = (-H + λI)^{-1} g (b, d) with the smallest λ in {0, 1e-8·s, 1e-7·s, ...} that makes the matrix positive definite."""
    dim = neg_hessian.shape[-1]
    eye = torch.eye(dim, dtype=neg_hessian.dtype, device=neg_hessian.device)
    scale = neg_hessian.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp(min=1.0)  # (b,)
    damping = torch.zeros_like(scale)
    cholesky, info = torch.linalg.cholesky_ex(neg_hessian)
    for power in range(-8, 9):
        failed = info != 0
        if not bool(failed.any()):
            break
        damping[failed] = scale[failed] * 10.0**power
        cholesky[failed], info[failed] = torch.linalg.cholesky_ex(neg_hessian[failed] + damping[failed, None, None] * eye)
    step = torch.cholesky_solve(gradient.unsqueeze(-1), cholesky).squeeze(-1)
    # Where even heavy damping fails (non-finite curvature), fall back to a plain gradient step.
    return torch.where((info != 0).unsqueeze(-1), gradient, step)


def laplace_proposal(z_star: torch.Tensor, neg_hessian: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z = z* + L^{-T} eps ~ N(z*, (-H)^{-1}) with -H = L Lᵀ, and log q(z) = -d/2 log 2π + Σ log L_jj - ½|eps|².

    z_star (B, d), neg_hessian (B, d, d) positive definite, eps (B, c, d) standard normal -> z (B, c, d), log q (B, c) nats.
    """
    cholesky, info = torch.linalg.cholesky_ex(neg_hessian)
    if bool((info != 0).any()):
        raise VaelabError(f"-H is not positive definite for {int((info != 0).sum())} image(s); the Laplace proposal does not exist there")
    offset = torch.linalg.solve_triangular(cholesky.mT, eps.mT, upper=True).mT  # (B, c, d): L^{-T} eps
    half_log_det = torch.log(cholesky.diagonal(dim1=-2, dim2=-1)).sum(-1, keepdim=True)  # ½ log det(-H), (B, 1)
    log_q = -0.5 * z_star.shape[-1] * LOG_2PI + half_log_det - 0.5 * eps.square().sum(-1)
    return z_star.unsqueeze(1) + offset, log_q


def vae_log_joint(model: VAE, device: torch.device | str = "cpu") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """log p(x, z) = Σ_i x_i l_i - softplus(l_i) + log N(z; 0, I), l = decode(z): f(z (d,), x (P,)) -> () nats, float64."""
    decoder = VAE(model.config).to(device, torch.float64).requires_grad_(False)
    decoder.load_state_dict(model.state_dict())
    dim = model.config.latent_dim

    def log_joint(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = decoder.decode(z)
        # Written out (not BCE-with-logits) so that every torch.func transform can pass through it.
        return (x * logits - F.softplus(logits)).sum() - 0.5 * (z.square().sum() + dim * LOG_2PI)

    return log_joint


class LaplaceEvidence:
    """`laplace_evidence`'s result; unpacks as (estimate, z_star, neg_hessian).

    estimate: Estimate of log p(x) (nats per image); z_star (N, d); neg_hessian (N, d, d) = -∇² log p(x, z) at z*;
    log_evidence (N,) per image; unconverged: images where Newton stopped without converging (see `newton_mode`).
    """

    def __init__(self, estimate: Estimate, z_star: torch.Tensor, neg_hessian: torch.Tensor, log_evidence: torch.Tensor, unconverged: int) -> None:
        self.estimate, self.z_star, self.neg_hessian = estimate, z_star, neg_hessian
        self.log_evidence, self.unconverged = log_evidence, unconverged

    def __iter__(self) -> Iterator:
        return iter((self.estimate, self.z_star, self.neg_hessian))


def laplace_evidence(
    model: VAE, x: torch.Tensor, *, device: torch.device | str | None = None, batch_size: int = 500, max_iter: int = 50
) -> LaplaceEvidence:
    """log p(x) ≈ log p(x, z*) + (d/2) log 2π - ½ log det(-H), z* = argmax_z log p(x, z), H = ∇²_z log p(x, z*).

    x (N, P); Newton starts at the encoder mean, in float64, batch_size images at a time.
    Returns a LaplaceEvidence, which unpacks as (Estimate in nats per image, z_star (N, d), neg_hessian (N, d, d)).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    started = time.perf_counter()
    log_joint = vae_log_joint(model, device)
    encoder = _encoder_on(model, device)
    modes = []
    for first in range(0, x.shape[0], batch_size):
        batch = x[first : first + batch_size].to(device, torch.float32)
        with torch.no_grad():
            mu, _ = encoder(batch)
        modes.append(newton_mode(log_joint, mu, batch, max_iter=max_iter))
    z_star = torch.cat([mode.z for mode in modes]).cpu()
    neg_hessian = torch.cat([mode.neg_hessian for mode in modes]).cpu()
    log_peak = torch.cat([mode.log_peak for mode in modes]).cpu()
    unconverged = sum(int((~mode.converged).sum()) for mode in modes)
    log_evidence = gaussian_log_evidence(log_peak, neg_hessian)
    estimate = Estimate.from_values(log_evidence, time.perf_counter() - started)
    return LaplaceEvidence(estimate, z_star, neg_hessian, log_evidence, unconverged)


@torch.no_grad()
def laplace_importance_sampling(
    model: VAE,
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    z_star: torch.Tensor | None = None,
    neg_hessian: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Estimate:
    """log (1/k) Σ_i p(x, z_i)/q(z_i), z_i ~ q = N(z*, (-H)^{-1}), over x (N, P): nats per image.

    Like L_k a stochastic lower bound on log p(x) in expectation, but with the Laplace Gaussian as
    the proposal; exact with zero variance when the posterior is Gaussian. The mode comes from
    `laplace_evidence` unless z_star and neg_hessian are given; `seconds` counts only this call.
    """
    if k < 1:
        raise VaelabError(f"--laplace-k must be >= 1 (got {k})")
    started = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if z_star is None or neg_hessian is None:
        _, z_star, neg_hessian = laplace_evidence(model, x, device=device)
    n_images = x.shape[0]
    images, samples = _layout(n_images, k, 0, max_bytes, model)
    decoder = _BernoulliDecoder(model, images * samples, device)
    noise = _Noise(seed, _LAPLACE_STREAM, model.config.latent_dim, device)
    estimates = torch.empty(n_images, dtype=torch.float64)
    for first in range(0, n_images, images):
        index = range(first, min(first + images, n_images))
        batch = x[index.start : index.stop].to(device, torch.float32)
        xw, xb = decoder.data_terms(batch)
        mode_z = z_star[index.start : index.stop].to(device, torch.float64)
        mode_neg_hessian = neg_hessian[index.start : index.stop].to(device, torch.float64)
        accumulator = PrefixLogMeanExp([k], len(index), device)
        for start in range(0, k, samples):
            eps = noise.draw(index, start, min(start + samples, k)).double()  # (b, c, d)
            z, log_q = laplace_proposal(mode_z, mode_neg_hessian, eps)
            log_prior_over_q = -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI) - log_q  # (b, c)
            accumulator.update(decoder.log_likelihood(z.float(), xw, xb).double() + log_prior_over_q)
        estimates[first : index.stop] = accumulator.bounds[k].cpu()
    return Estimate.from_values(estimates, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# Active units and the training-time ELBO
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def active_units(model: VAE, x: torch.Tensor, threshold: float = 0.01, *, batch_size: int = 2000) -> tuple[int, torch.Tensor]:
    """A_u = Cov_x(E_q[z_u]) = Var over images of mu_u(x) (Burda et al. 2015): x (N, P) -> (count with A_u > threshold, A (D,) float64)."""
    if x.shape[0] < 2:
        raise VaelabError("active units need at least 2 images (a variance over images)")
    device = next(model.parameters()).device
    means = torch.cat([model.encode(x[start : start + batch_size].to(device, torch.float32))[0].double().cpu() for start in range(0, x.shape[0], batch_size)])
    variances = means.var(dim=0, correction=1)
    return int((variances > threshold).sum()), variances


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
