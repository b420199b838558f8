"""Laplace's method in d dimensions: `gaussian_log_evidence` gives log ∫ of a Gaussian from its peak
value and -H (batched, log det by Cholesky), and `laplace_integral_nd` finds the maximum of f by Newton
with a backtracking line search (L-BFGS where -H is not positive definite), takes the Hessian with
torch.func and returns the estimate as a `LaplaceResultND`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from vaelab.errors import VaelabError
from vaelab.laplace.common import DTYPE, LOG_2PI, _positive_finite
from vaelab.optim import lbfgs_minimum

__all__ = ["LaplaceResultND", "gaussian_log_evidence", "laplace_integral_nd"]


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaplaceResultND:
    """Laplace's estimate of log ∫ exp(M f(x)) dx over R^d (nats) and the parts it is built from."""

    log_value: float  # M f(x0) + (d/2) log(2π/M) - ½ log det(-H), nats
    x0: torch.Tensor  # (d,) the maximum
    f0: float  # f(x0)
    neg_hessian: torch.Tensor  # (d, d) -H = -∇²f(x0), positive definite
    log_det_neg_hessian: float  # log det(-H)
    M: float
    newton_steps: int  # steps taken to find x0 (0 when x0 was given)


# --------------------------------------------------------------------------------------------
# d dimensions
# --------------------------------------------------------------------------------------------


def gaussian_log_evidence(log_peak: torch.Tensor, neg_hessian: torch.Tensor) -> torch.Tensor:
    """log ∫ exp(log_peak - ½ zᵀ(-H)z) dz = log_peak + (d/2) log 2π - ½ log det(-H):
    (...,), (..., d, d) -> (...,), nats, float64.

    The Laplace evidence log p(x) ≈ log p(x, z*) + (d/2) log 2π - ½ log det(-H) (M = 1); log det by Cholesky.
    """
    log_peak = torch.as_tensor(log_peak, dtype=DTYPE)
    neg_hessian = torch.as_tensor(neg_hessian, dtype=DTYPE)
    if (
        neg_hessian.ndim < 2
        or neg_hessian.shape[-1] != neg_hessian.shape[-2]
        or neg_hessian.shape[:-2] != log_peak.shape
    ):
        raise VaelabError(
            f"neg_hessian must be (..., d, d) with log_peak (...,) (got {tuple(neg_hessian.shape)} "
            f"and {tuple(log_peak.shape)}); stack one d x d matrix per log_peak entry"
        )
    dimension = neg_hessian.shape[-1]
    nonfinite = ~(torch.isfinite(log_peak) & torch.isfinite(neg_hessian).all(-1).all(-1))
    if bool(nonfinite.any()):
        bad = [index[0] if len(index) == 1 else tuple(index) for index in nonfinite.nonzero().tolist()]
        raise VaelabError(
            "log_peak or neg_hessian is not finite at batch item(s) "
            f"{bad[:5]}; check the maximisation that produced them"
        )
    # Only the symmetric part enters the quadratic form; symmetrising removes autograd's rounding asymmetry.
    symmetric = 0.5 * (neg_hessian + neg_hessian.mT)
    cholesky, info = torch.linalg.cholesky_ex(symmetric)
    if bool((info != 0).any()):
        failed = [index[0] if len(index) == 1 else tuple(index) for index in (info != 0).nonzero().tolist()]
        raise VaelabError(
            f"-H is not positive definite at batch item(s) {failed[:5]}{' ...' if len(failed) > 5 else ''} "
            f"({len(failed)} of {info.numel()}): those points are not strict maxima, so the Gaussian (Laplace) "
            "approximation does not exist there; run the maximisation longer or check the sign (pass -H, not H)"
        )
    log_det = 2.0 * torch.log(torch.diagonal(cholesky, dim1=-2, dim2=-1)).sum(-1)
    return log_peak + 0.5 * dimension * LOG_2PI - 0.5 * log_det


def laplace_integral_nd(
    f: Callable[[torch.Tensor], torch.Tensor],
    M: float = 1.0,
    *,
    x0: torch.Tensor | Sequence[float] | None = None,
    init: torch.Tensor | Sequence[float] | None = None,
    max_newton_steps: int = 100,
    stationary_tol: float = 1e-6,
) -> LaplaceResultND:
    """log ∫_{R^d} exp(M f(x)) dx ≈ M f(x0) + (d/2) log(2π/M) - ½ log det(-H),
    H = ∇²f(x0) by torch.func.jacrev twice, nats.

    f maps a float64 (d,) tensor to a scalar tensor. Without x0 the maximum is found from init by
    Newton with a backtracking line search, falling back to L-BFGS where -H is not positive definite.
    `stationary_tol`: the largest accepted Newton step to the maximum, in peak widths (√M · √(gᵀ(-H)⁻¹g)).
    """
    M = _positive_finite("M", M)
    if (x0 is None) == (init is None):
        raise VaelabError("pass exactly one of x0 (the maximum) or init (where Newton starts looking for it)")
    start = torch.as_tensor(x0 if x0 is not None else init, dtype=DTYPE).detach().reshape(-1).clone()
    if not bool(torch.isfinite(start).all()):
        raise VaelabError(f"the starting point {start.tolist()} is not finite; give finite coordinates")
    point, steps = (start, 0) if x0 is not None else _newton_maximise(f, start, M, max_newton_steps, stationary_tol)

    f0, gradient, neg_hessian = _value_gradient_neg_hessian(f, point)
    cholesky, info = torch.linalg.cholesky_ex(neg_hessian)
    if int(info) != 0:
        eigenvalues = torch.linalg.eigvalsh(neg_hessian)
        raise VaelabError(
            f"-H at x0 is not positive definite (eigenvalues of -H: {[round(v, 6) for v in eigenvalues.tolist()]}): "
            "x0 is not a strict maximum (a saddle or minimum); give the maximum of f"
        )
    shift_in_widths = math.sqrt(M * max(float(gradient @ torch.cholesky_solve(gradient[:, None], cholesky)[:, 0]), 0.0))
    if shift_in_widths > stationary_tol:
        raise VaelabError(
            f"x0 is not a stationary point: |∇f(x0)| = {float(gradient.norm()):.3g}, {shift_in_widths:.3g} "
            "peak widths from the maximum; pass init instead of x0 to let Newton find it"
        )
    log_value = float(gaussian_log_evidence(torch.tensor([M * f0], dtype=DTYPE), (M * neg_hessian)[None])[0])
    log_det = float(2.0 * torch.log(torch.diagonal(cholesky)).sum())
    return LaplaceResultND(log_value, point, f0, neg_hessian, log_det, M, steps)


def _value_gradient_neg_hessian(f: Callable, x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """f(x), ∇f(x) (d,) and the symmetrised -∇²f(x) (d, d), all float64; non-finite values are refused."""
    try:
        gradient, value = torch.func.grad_and_value(f)(x)
        # Reverse over reverse: torch.func.hessian's forward mode loads jit-scripted decompositions,
        # which warn (DeprecationWarning) in current torch.
        hessian = torch.func.jacrev(torch.func.jacrev(f))(x)
    except Exception as error:
        raise VaelabError(
            f"differentiating f failed ({type(error).__name__}: {error}); f must "
            "map a float64 (d,) tensor to a scalar with torch functions"
        ) from None
    hessian = hessian.reshape(x.numel(), x.numel())
    if not (
        bool(torch.isfinite(value)) and bool(torch.isfinite(gradient).all()) and bool(torch.isfinite(hessian).all())
    ):
        raise VaelabError(
            f"f, its gradient or its Hessian is not finite at x = {x.tolist()}; "
            "f must be smooth and finite near its maximum"
        )
    return float(value), gradient.reshape(-1), -0.5 * (hessian + hessian.mT)


def _newton_maximise(f: Callable, x: torch.Tensor, M: float, max_steps: int, tol: float) -> tuple[torch.Tensor, int]:
    """Newton ascent x ← x + t (-H)⁻¹∇f with Armijo backtracking; L-BFGS where -H is not positive definite."""
    fallbacks = 0
    for step in range(1, max_steps + 1):
        value, gradient, neg_hessian = _value_gradient_neg_hessian(f, x)
        cholesky, info = torch.linalg.cholesky_ex(neg_hessian)
        if int(info) == 0:
            direction = torch.cholesky_solve(gradient[:, None], cholesky)[:, 0]
            decrement = float(gradient @ direction)  # gᵀ(-H)⁻¹g ≈ 2 (f(x*) - f(x))
            # Newton converges quadratically, so iterate to float64 resolution rather than to tol.
            if float(direction.abs().max()) <= 8.0 * torch.finfo(DTYPE).eps * (1.0 + float(x.abs().max())):
                return x, step - 1
            t = 1.0
            while t > 1e-10:
                candidate = x + t * direction
                if float(f(candidate)) >= value + 1e-4 * t * decrement:
                    break
                t *= 0.5
            else:
                candidate = None
            if candidate is not None:
                if bool((candidate == x).all()):  # the step is below float64 resolution: as converged as it gets
                    return x, step
                x = candidate
                continue
            if math.sqrt(M * max(decrement, 0.0)) <= tol:
                return x, step - 1  # rounding noise stops the line search, but x is within tolerance already
        if fallbacks == 3:
            break
        fallbacks += 1
        x = _lbfgs_ascent(f, x)
    raise VaelabError(
        f"Newton did not reach a maximum of f from init within {max_steps} steps and {fallbacks} L-BFGS "
        f"restarts (stopped at x = {x.tolist()}); f may have no maximum, or start closer to it or pass x0"
    )


def _lbfgs_ascent(f: Callable, x: torch.Tensor) -> torch.Tensor:
    """Maximise f from x with L-BFGS (strong Wolfe line search), which needs no concavity."""
    result = lbfgs_minimum(lambda point: -f(point), x, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15)
    if not bool(torch.isfinite(result).all()):
        raise VaelabError(
            "L-BFGS ran off to non-finite x while looking for the maximum of f: f may be unbounded "
            "above (no maximum); check f, or start closer to its maximum or pass x0"
        )
    return result
