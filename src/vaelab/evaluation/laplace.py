"""Laplace's method in latent space: log p(x) from the mode and curvature of log p(x, z), for any model.

z* = argmax_z log p(x, z) by batched Newton with exact Hessians (torch.func), then
log p(x) ≈ log p(x, z*) + (D/2) log 2π - ½ log det(-H); and importance sampling with the
Gaussian N(z*, (-H)^{-1}) as the proposal. With two stochastic layers z is the joint latent
(z1, z2). The maths cores (`newton_mode`, `laplace_proposal`) take callables and tensors, so
they are tested on a linear-Gaussian model whose log p(x) is exact (docs/evaluation.md).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from tqdm import tqdm
from torch.func import grad_and_value, jacrev, vmap

from vaelab.distributions import LOG_2PI
from vaelab.errors import VaelabError
from vaelab.evaluation.common import (
    DEFAULT_MAX_BYTES,
    LAPLACE_STREAM,
    Estimate,
    Noise,
    PrefixLogMeanExp,
    model_on,
)
from vaelab.evaluation.iwae import LogWeights, layout
from vaelab.laplace import gaussian_log_evidence
from vaelab.models.base import LatentVariableModel


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

    def gradient_and_value(
        point: torch.Tensor, item: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
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
            raise VaelabError(
                "log p(x, z) or its Hessian is not finite during the Newton search; check the model's weights"
            )
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
    """s = (-H + λI)^{-1} g (b, d) with the smallest λ in {0, 1e-8·s, 1e-7·s, ...} that makes the matrix positive
    definite."""
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
        cholesky[failed], info[failed] = torch.linalg.cholesky_ex(
            neg_hessian[failed] + damping[failed, None, None] * eye
        )
    step = torch.cholesky_solve(gradient.unsqueeze(-1), cholesky).squeeze(-1)
    # Where even heavy damping fails (non-finite curvature), fall back to a plain gradient step.
    return torch.where((info != 0).unsqueeze(-1), gradient, step)


def laplace_proposal(
    z_star: torch.Tensor, neg_hessian: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = z* + L^{-T} eps ~ N(z*, (-H)^{-1}) with -H = L Lᵀ, and log q(z) = -d/2 log 2π + Σ log L_jj - ½|eps|².

    z_star (B, d), neg_hessian (B, d, d) positive definite, eps (B, c, d) standard normal
    -> z (B, c, d), log q (B, c) nats.
    """
    cholesky, info = torch.linalg.cholesky_ex(neg_hessian)
    if bool((info != 0).any()):
        raise VaelabError(
            f"-H is not positive definite for {int((info != 0).sum())} image(s); the Laplace proposal does not exist "
            "there"
        )
    offset = torch.linalg.solve_triangular(cholesky.mT, eps.mT, upper=True).mT  # (B, c, d): L^{-T} eps
    half_log_det = torch.log(cholesky.diagonal(dim1=-2, dim2=-1)).sum(-1, keepdim=True)  # ½ log det(-H), (B, 1)
    log_q = -0.5 * z_star.shape[-1] * LOG_2PI + half_log_det - 0.5 * eps.square().sum(-1)
    return z_star.unsqueeze(1) + offset, log_q


def model_log_joint(
    model: LatentVariableModel, device: torch.device | str = "cpu"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """log p(x, z) of a float64 copy of the model: f(z (D,), x (P,)) -> () nats, for torch.func.

    What the prior needs from the rest of the model (a VampPrior's components) is computed once,
    outside the transforms, and held constant.
    """
    frozen = copy.deepcopy(model).to(device, torch.float64).requires_grad_(False).eval()
    with torch.no_grad():
        components = frozen.prior_components()

    def log_joint(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return frozen.log_joint(x, z, components)

    return log_joint


class LaplaceEvidence:
    """`laplace_evidence`'s result; unpacks as (estimate, z_star, neg_hessian).

    estimate: Estimate of log p(x) (nats per image); z_star (N, d); neg_hessian (N, d, d) = -∇² log p(x, z) at z*;
    log_evidence (N,) per image; unconverged: images where Newton stopped without converging (see `newton_mode`);
    indefinite: images where -H at the point found was not positive definite (see `positive_definite`).
    """

    def __init__(
        self,
        estimate: Estimate,
        z_star: torch.Tensor,
        neg_hessian: torch.Tensor,
        log_evidence: torch.Tensor,
        unconverged: int,
        indefinite: int = 0,
    ) -> None:
        self.estimate, self.z_star, self.neg_hessian = estimate, z_star, neg_hessian
        self.log_evidence, self.unconverged, self.indefinite = log_evidence, unconverged, indefinite

    def __iter__(self) -> Iterator:
        return iter((self.estimate, self.z_star, self.neg_hessian))


def laplace_evidence(
    model: LatentVariableModel,
    x: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 500,
    max_iter: int = 50,
    progress: bool = False,
) -> LaplaceEvidence:
    """log p(x) ≈ log p(x, z*) + (d/2) log 2π - ½ log det(-H), z* = argmax_z log p(x, z), H = ∇²_z log p(x, z*).

    x (N, P); Newton starts at the posterior mean, in float64, batch_size images at a time.
    Returns a LaplaceEvidence, which unpacks as (Estimate in nats per image, z_star (N, d), neg_hessian (N, d, d)).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    started = time.perf_counter()
    log_joint = model_log_joint(model, device)
    model = model_on(model, device)
    dtype = next(model.parameters()).dtype
    modes = []
    for first in tqdm(
        range(0, x.shape[0], batch_size), desc="Laplace", unit="batch", disable=not progress, leave=False
    ):
        batch = x[first : first + batch_size].to(device, dtype)
        with torch.no_grad():
            start = model.posterior(batch).mean
        modes.append(newton_mode(log_joint, start, batch, max_iter=max_iter))
    z_star = torch.cat([mode.z for mode in modes]).cpu()
    neg_hessian = torch.cat([mode.neg_hessian for mode in modes]).cpu()
    log_peak = torch.cat([mode.log_peak for mode in modes]).cpu()
    unconverged = sum(int((~mode.converged).sum()) for mode in modes)
    neg_hessian, indefinite = positive_definite(neg_hessian)
    log_evidence = gaussian_log_evidence(log_peak, neg_hessian)
    estimate = Estimate.from_values(log_evidence, time.perf_counter() - started)
    return LaplaceEvidence(estimate, z_star, neg_hessian, log_evidence, unconverged, indefinite)


def positive_definite(neg_hessian: torch.Tensor) -> tuple[torch.Tensor, int]:
    """-H (N, d, d) with every matrix that is not positive definite replaced by |−H| (its eigenvalues'
    absolute values, floored at 1e-6 of the largest), and how many were replaced.

    Where Newton stops short of a maximum (a ReLU ridge, or between two components of a VampPrior's
    mixture), -H can be indefinite and the Gaussian of Laplace's method does not exist; |−H| is the
    curvature magnitude a saddle-free Newton step uses, so the Laplace estimate there is an
    approximation of an approximation (counted and reported), and Laplace-proposal importance
    sampling stays a valid stochastic lower bound with it as the proposal's precision.
    """
    _, info = torch.linalg.cholesky_ex(neg_hessian)
    bad = (info != 0).nonzero().squeeze(1)
    if bad.numel() == 0:
        return neg_hessian, 0
    values, vectors = torch.linalg.eigh(neg_hessian[bad])
    magnitude = values.abs()
    magnitude = torch.maximum(magnitude, 1e-6 * magnitude.amax(dim=-1, keepdim=True).clamp(min=1.0))
    repaired = neg_hessian.clone()
    repaired[bad] = (vectors * magnitude.unsqueeze(-2)) @ vectors.mT
    return repaired, int(bad.numel())


@torch.no_grad()
def laplace_importance_sampling(
    model: LatentVariableModel,
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    z_star: torch.Tensor | None = None,
    neg_hessian: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    first_image: int = 0,
    per_image: torch.Tensor | None = None,
) -> Estimate:
    """log (1/k) Σ_i p(x, z_i)/q(z_i), z_i ~ q = N(z*, (-H)^{-1}), over x (N, P): nats per image.

    Like L_k a stochastic lower bound on log p(x) in expectation, but with the Laplace Gaussian as
    the proposal; exact with zero variance when the posterior is Gaussian. The mode comes from
    `laplace_evidence` unless z_star and neg_hessian are given; `seconds` counts only this call.
    x's image i draws the noise of image `first_image + i` (shards give each image the whole pass's
    value); `per_image`, an (N,) float64 tensor, receives the per-image estimates when given.
    """
    if k < 1:
        raise VaelabError(f"--laplace-k must be >= 1 (got {k})")
    started = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if z_star is None or neg_hessian is None:
        _, z_star, neg_hessian = laplace_evidence(model, x, device=device)
    model = model_on(model, device)
    n_images = x.shape[0]
    images, samples = layout(n_images, k, 0, max_bytes, model)
    weights = LogWeights(model, images * samples, device)
    noise = Noise(seed, LAPLACE_STREAM, model.latent_dim, device)
    estimates = torch.empty(n_images, dtype=torch.float64)
    for first in range(0, n_images, images):
        index = range(first, min(first + images, n_images))
        weights.prepare(x[index.start : index.stop])
        mode_z = z_star[index.start : index.stop].to(device, torch.float64)
        mode_neg_hessian = neg_hessian[index.start : index.stop].to(device, torch.float64)
        accumulator = PrefixLogMeanExp([k], len(index), device)
        for start in range(0, k, samples):
            shard = range(index.start + first_image, index.stop + first_image)
            eps = noise.draw(shard, start, min(start + samples, k)).double()  # (b, c, D)
            z, log_q = laplace_proposal(mode_z, mode_neg_hessian, eps)  # (b, c, D), (b, c)
            log_joint = weights.log_likelihood(z) + weights.log_prior(z)  # (b, c) float64
            accumulator.update(log_joint - log_q)
        estimates[first : index.stop] = accumulator.bounds[k].cpu()
    if per_image is not None:
        per_image.copy_(estimates)
    return Estimate.from_values(estimates, time.perf_counter() - started)
