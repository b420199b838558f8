"""Laplace's method in one dimension: `laplace_integral` finds the maximum of f on an interval (a grid
search, grown outwards on an infinite interval, then Newton), refuses a second peak of comparable
height, and returns the interior series to any order or, for a maximum at an end, the half-Gaussian or
endpoint form, as a `LaplaceResult`; `quadrature_log_integral` is the adaptive-quadrature reference the
estimates are checked against (mpmath or scipy, imported only there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from vaelab.errors import VaelabError
from vaelab.laplace.common import DTYPE, LOG_2PI, _positive_finite
from vaelab.laplace.series import series_coefficients, taylor_derivatives

__all__ = ["LaplaceResult", "laplace_integral", "quadrature_log_integral"]

# Grid used to find the maximum before Newton polishes it.
_GRID_POINTS = 1025
_MAX_WINDOW_GROWTHS = 40  # an infinite interval's search window grows 4x per try, up to ~1e24 wide
# Another local maximum whose height satisfies M (f(x0) - f) < this carries more than e^-20 ≈ 2e-9
# of the peak's weight, which a single-peak estimate would silently drop.
_COMPETING_PEAK_GAP = 20.0


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaplaceResult:
    """Laplace's estimate of log ∫ exp(M f(x)) dx (nats) and the parts it is built from."""

    log_value: float  # log of the estimate, nats
    x0: float  # where f is largest; an end of the interval unless kind == "interior"
    f0: float  # f(x0)
    f1: float  # f'(x0): ~0 unless kind == "endpoint"
    f2: float  # f''(x0)
    M: float
    order: int  # highest power of 1/M kept in the series
    kind: str  # "interior", "half_gaussian" or "endpoint"
    coefficients: tuple  # c_0 = 1, c_1, ..., c_order; Fractions when the derivatives were rational

    @property
    def terms(self) -> tuple[float, ...]:
        """c_k / M^k, the series' terms; their sum multiplies the leading Gaussian estimate."""
        return tuple(float(c) * self.M ** (-k) for k, c in enumerate(self.coefficients))

    @property
    def value(self) -> float:
        """exp(log_value); inf when it overflows float64 (use log_value)."""
        return math.exp(self.log_value) if self.log_value < 709.0 else math.inf


# --------------------------------------------------------------------------------------------
# one dimension
# --------------------------------------------------------------------------------------------


def _values_on_grid(f: Callable[[torch.Tensor], torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
    """f at each point of xs (n,) -> (n,) float64; one vectorised call when f allows it."""
    with torch.no_grad():
        try:
            values = torch.as_tensor(f(xs), dtype=DTYPE)
        except Exception:  # an f that is not elementwise (x @ w, math.*): one call per point below
            values = None
        if values is None or values.shape != xs.shape:
            try:
                values = torch.stack([torch.as_tensor(f(x), dtype=DTYPE).reshape(()) for x in xs])
            except Exception as error:
                raise VaelabError(
                    f"evaluating f failed ({type(error).__name__}: {error}); f must map "
                    "a float64 tensor x to a tensor of the same shape"
                ) from None
    return values


def _first_nonfinite(xs: torch.Tensor, values: torch.Tensor) -> None:
    bad = torch.isnan(values) | (values == math.inf)
    if bool(bad.any()):
        index = int(bad.nonzero()[0])
        raise VaelabError(
            f"f({float(xs[index]):.6g}) = {float(values[index])}: f must be finite (or "
            "-inf) on the interval; restrict the interval to where f is defined"
        )


def _locate_maximum(f: Callable, lower: float, upper: float, init: float | None, M: float, tol: float) -> float:
    """The x in [lower, upper] where f is largest: a grid search (grown outwards on an infinite
    interval), then Newton."""
    if math.isfinite(lower) and math.isfinite(upper):
        centre, half_width = 0.5 * (lower + upper), 0.5 * (upper - lower)
    else:
        if init is not None:
            centre = float(init)
        else:
            centre = lower + 1.0 if math.isfinite(lower) else upper - 1.0 if math.isfinite(upper) else 0.0
        if not lower <= centre <= upper:
            raise VaelabError(
                f"init = {centre} lies outside the interval [{lower}, {upper}]; start the search inside it"
            )
        half_width = 1.0
    for _ in range(_MAX_WINDOW_GROWTHS):
        left, right = max(lower, centre - half_width), min(upper, centre + half_width)
        xs = torch.linspace(left, right, _GRID_POINTS, dtype=DTYPE)
        values = _values_on_grid(f, xs)
        _first_nonfinite(xs, values)
        best = int(torch.argmax(values))
        if values[best] == -math.inf:
            raise VaelabError(
                f"f = -inf everywhere on [{left:.6g}, {right:.6g}]: the integrand "
                "is zero there; choose an interval where f is finite"
            )
        grows_left = best == 0 and left > lower
        grows_right = best == _GRID_POINTS - 1 and right < upper
        if not (grows_left or grows_right):
            break
        half_width *= 4.0
    else:
        side = "-inf" if grows_left else "+inf"
        raise VaelabError(
            f"f keeps increasing towards {side} (searched out to |x| ~ {half_width:.3g}): there is no "
            "maximum and ∫ exp(M f) diverges; give a finite interval end or a different f"
        )
    _refuse_competing_peak(xs, values, best, M)

    if best == 0 or best == _GRID_POINTS - 1:
        end = float(xs[best])
        _, slope, curvature = taylor_derivatives(f, end, 2)
        inward = 1.0 if best == 0 else -1.0
        flat = curvature < 0 and abs(slope) * math.sqrt(M / -curvature) <= tol
        if flat or slope * inward <= 0:
            return end  # a boundary maximum: half-Gaussian or endpoint form
        # f still rises into the interval: the peak lies within the first grid cell.
        lo, hi = (xs[0], xs[1]) if best == 0 else (xs[-2], xs[-1])
        return _newton_in_bracket(f, float(lo), float(hi))
    return _refine_interior(f, xs, best)


def _refuse_competing_peak(xs: torch.Tensor, values: torch.Tensor, best: int, M: float) -> None:
    """Raise when another grid maximum is high enough that a single-peak estimate would drop a visible share."""
    padded = torch.cat([values.new_tensor([-math.inf]), values, values.new_tensor([-math.inf])])
    local_max = (padded[1:-1] >= padded[:-2]) & (padded[1:-1] >= padded[2:])
    local_max[max(0, best - 1) : best + 2] = False
    competitors = local_max & (M * (values[best] - values) < _COMPETING_PEAK_GAP)
    if bool(competitors.any()):
        other = int(competitors.nonzero()[0])
        raise VaelabError(
            f"f has two comparable maxima, near x = {float(xs[best]):.6g} and x = {float(xs[other]):.6g} "
            f"(M·(difference in f) = {float(M * (values[best] - values[other])):.3g} "
            f"< {_COMPETING_PEAK_GAP:g}), so one "
            "Laplace peak would miss part of the integral; split the interval so that each piece holds one maximum"
        )


def _refine_interior(f: Callable, xs: torch.Tensor, best: int) -> float:
    """Zoom in on grid[best] until f' changes sign from + to - across a bracket, then Newton in it."""
    lo, hi = float(xs[best - 1]), float(xs[best + 1])
    for _ in range(20):
        if taylor_derivatives(f, lo, 1)[1] > 0 > taylor_derivatives(f, hi, 1)[1]:
            return _newton_in_bracket(f, lo, hi)
        # Several extrema (or an exact zero of f') inside the bracket: search it on a finer grid.
        fine = torch.linspace(lo, hi, 257, dtype=DTYPE)
        fine_values = _values_on_grid(f, fine)
        index = min(max(int(torch.argmax(fine_values)), 1), 255)
        lo, hi = float(fine[index - 1]), float(fine[index + 1])
    return 0.5 * (lo + hi)


def _newton_in_bracket(f: Callable, lo: float, hi: float) -> float:
    """Root of f' in [lo, hi] (f'(lo) > 0 > f'(hi)): Newton steps, bisection whenever Newton would leave the bracket."""
    x = 0.5 * (lo + hi)
    for _ in range(200):
        _, slope, curvature = taylor_derivatives(f, x, 2)
        if slope == 0.0:
            return x
        if slope > 0:
            lo = x
        else:
            hi = x
        step_to = x - slope / curvature if curvature < 0 else math.nan
        if not lo < step_to < hi:
            step_to = 0.5 * (lo + hi)
        if abs(step_to - x) <= 4.0 * math.ulp(max(abs(x), 1e-300)) or hi - lo <= 4.0 * math.ulp(max(abs(x), 1e-300)):
            return step_to
        x = step_to
    return x


def laplace_integral(
    f: Callable[[torch.Tensor], torch.Tensor] | None,
    M: float,
    *,
    lower: float = -math.inf,
    upper: float = math.inf,
    x0: float | None = None,
    init: float | None = None,
    order: int = 0,
    derivatives: Sequence[Any] | None = None,
    allow_boundary: bool = True,
    stationary_tol: float = 1e-6,
) -> LaplaceResult:
    """log ∫_lower^upper exp(M f(x)) dx ≈ M f0 + ½ log(2π/(M a)) + log(Σ_{k≤order} c_k M^{-k}), a = -f''(x0), in nats.

    f maps a float64 tensor to a tensor of the same shape (torch functions). x0 is found on the
    interval when not given (from `init` on an infinite one). `derivatives` = (f(x0), f'(x0), ...,
    f^(2·order+2)(x0)) replaces f (ints/Fractions give exact coefficients). A maximum at an end gives
    the half-Gaussian or endpoint form (order 0). `stationary_tol`: the largest accepted distance from
    x0 to the point where f' = 0, in peak widths 1/sqrt(M a).
    """
    M = _positive_finite("M", M)
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise VaelabError(f"order must be an integer >= 0 (got {order!r})")
    lower, upper = float(lower), float(upper)
    if not lower < upper:
        raise VaelabError(f"the interval needs lower < upper (got [{lower}, {upper}])")
    if derivatives is not None:
        if x0 is None:
            raise VaelabError("derivatives are values at x0: pass x0 with them")
        needed = 3 if x0 in (lower, upper) else 2 * order + 3
        if len(derivatives) < needed:
            raise VaelabError(
                f"order {order} needs derivatives (f(x0), f'(x0), ..., f^({needed - 1})(x0)): "
                f"{needed} values (got {len(derivatives)})"
            )
        derivs: Sequence[Any] | None = list(derivatives[:needed])
    elif f is None:
        raise VaelabError("give f (a function of a float64 tensor) or derivatives with x0")
    else:
        derivs = None
        if x0 is None:
            x0 = _locate_maximum(f, lower, upper, init, M, stationary_tol)
    x0 = float(x0)
    if not (math.isfinite(x0) and lower <= x0 <= upper):
        raise VaelabError(f"x0 = {x0} is not a finite point of the interval [{lower}, {upper}]; give x0 inside it")

    at_end = x0 in (lower, upper)
    if derivs is None:
        derivs = taylor_derivatives(f, x0, 2 if at_end else 2 * order + 2)
    if not all(math.isfinite(float(d)) for d in derivs):
        raise VaelabError(
            f"f or its derivatives are not finite at x0 = {x0:.17g} "
            f"({[float(d) for d in derivs]}); f must be smooth and finite at its maximum"
        )
    f0, f1, f2 = (float(d) for d in derivs[:3])

    if not at_end and f2 < 0 and f is not None and derivatives is None:
        # A maximum closer to an end than the stationarity tolerance is numerically at that end.
        nearest_end = lower if x0 - lower <= upper - x0 else upper
        if abs(x0 - nearest_end) * math.sqrt(M * -f2) <= stationary_tol:
            return laplace_integral(
                f,
                M,
                lower=lower,
                upper=upper,
                x0=nearest_end,
                order=order,
                allow_boundary=allow_boundary,
                stationary_tol=stationary_tol,
            )
    if at_end:
        return _boundary_estimate(x0, f0, f1, f2, M, lower, upper, order, allow_boundary, stationary_tol)

    if not f2 < 0:
        raise VaelabError(
            f"f''(x0) = {f2 + 0.0:.6g} >= 0 at x0 = {x0:.17g}: not a strict maximum, so the Gaussian width 1/sqrt(M "
            "|f''|) does not exist; give x0 where f'' < 0 (a degenerate maximum needs another method)"
        )
    shift_in_widths = abs(f1) * math.sqrt(
        M / -f2
    )  # |f'/f''| (Newton's distance to the peak) over the width 1/sqrt(M a)
    if shift_in_widths > stationary_tol:
        raise VaelabError(
            f"x0 = {x0:.17g} is not a stationary point: f'(x0) = {f1:.6g}, so the maximum is ~{abs(f1 / f2):.3g} "
            f"away ({shift_in_widths:.3g} peak widths); omit x0 and let laplace_integral find the maximum"
        )
    coefficients = series_coefficients(derivs, order)
    correction = sum(float(c) * M ** (-k) for k, c in enumerate(coefficients) if k > 0)
    if not correction > -1.0:
        raise VaelabError(
            f"the series 1 + Σ c_k/M^k = {1.0 + correction:.6g} is not positive at M = {M:g}, "
            f"order {order}: M is too small for this order; lower the order or raise M"
        )
    log_value = M * f0 + 0.5 * (LOG_2PI - math.log(M * -f2)) + math.log1p(correction)
    return LaplaceResult(log_value, x0, f0, f1, f2, M, order, "interior", tuple(coefficients))


def _boundary_estimate(
    x0: float,
    f0: float,
    f1: float,
    f2: float,
    M: float,
    lower: float,
    upper: float,
    order: int,
    allow_boundary: bool,
    tol: float,
) -> LaplaceResult:
    """Half-Gaussian (f'(x0) = 0) or endpoint (f'(x0) ≠ 0) form at an end of the interval, order 0."""
    end = "lower" if x0 == lower else "upper"
    if not allow_boundary:
        raise VaelabError(
            f"the maximum of f on [{lower}, {upper}] is at the {end} end x0 = {x0:.6g}, not inside: there is no "
            "interior maximum; widen the interval, or pass allow_boundary=True for the half-Gaussian / endpoint forms"
        )
    if order > 0:
        raise VaelabError(
            f"the maximum is at the {end} end x0 = {x0:.6g}, where only order 0 is implemented "
            "(the interior series does not apply at an end); use order 0"
        )
    inward_slope = f1 if end == "lower" else -f1  # the derivative of f walking into the interval
    if f2 < 0 and abs(f1) * math.sqrt(M / -f2) <= tol:
        # Half of the Gaussian integral: ∫_0^∞ e^{-M a y²/2} dy = ½ sqrt(2π/(M a)).
        log_value = M * f0 + 0.5 * (LOG_2PI - math.log(M * -f2)) - math.log(2.0)
        return LaplaceResult(log_value, x0, f0, f1, f2, M, 0, "half_gaussian", (1,))
    if inward_slope < 0:
        # ∫_0^∞ e^{-M |f'| y} dy = 1 / (M |f'|): the linear term dominates the quadratic one as M grows.
        log_value = M * f0 - math.log(M * abs(f1))
        return LaplaceResult(log_value, x0, f0, f1, f2, M, 0, "endpoint", (1,))
    if inward_slope == 0:
        raise VaelabError(
            f"f'(x0) = 0 and f''(x0) = {f2:.6g} >= 0 at the {end} end x0 = {x0:.6g}: "
            "not a maximum; give the interval where f has its maximum"
        )
    raise VaelabError(
        f"f increases into the interval from the {end} end x0 = {x0:.6g} "
        f"(f'(x0) = {f1:.6g}): the maximum lies inside; give x0 there or omit it"
    )


# --------------------------------------------------------------------------------------------
# reference quadrature (optional extras)
# --------------------------------------------------------------------------------------------


def quadrature_log_integral(
    f: Callable[[torch.Tensor], torch.Tensor],
    M: float,
    lower: float = -math.inf,
    upper: float = math.inf,
    *,
    peak: float,
    width: float | None = None,
) -> float:
    """log ∫_lower^upper exp(M f(x)) dx in nats by adaptive quadrature (mpmath.quad, else scipy's quad).

    The integrand is scaled by exp(-M f(peak)) and split at peak ± width, ± 10 width (default width
    1/sqrt(M)); f is evaluated in float64, so expect ~1e-13 relative accuracy.
    """
    M = _positive_finite("M", M)
    peak = float(peak)
    width = 1.0 / math.sqrt(M) if width is None else _positive_finite("width", width)
    f_peak = float(f(torch.tensor(peak, dtype=DTYPE)))
    if not math.isfinite(f_peak):
        raise VaelabError(f"f(peak) = {f_peak} at peak = {peak}: give a peak where f is finite")

    def scaled_integrand(x: float) -> float:
        value = float(f(torch.tensor(float(x), dtype=DTYPE)))
        if math.isnan(value) or value == math.inf:
            raise VaelabError(
                f"f({float(x):.6g}) = {value} inside the quadrature interval; "
                "restrict the interval to where f is defined"
            )
        return math.exp(M * (value - f_peak))

    splits = sorted(
        {lower, upper} | {peak + s * width for s in (-10, -1, 0, 1, 10) if lower < peak + s * width < upper}
    )
    try:
        import mpmath
    except ModuleNotFoundError:
        mpmath = None
    if mpmath is not None:
        total = float(mpmath.quad(lambda x: scaled_integrand(float(x)), splits))
    else:
        try:
            from scipy.integrate import quad
        except ModuleNotFoundError:
            raise VaelabError("quadrature needs mpmath or scipy: pip install 'vaelab[quadrature]'") from None
        total = sum(
            quad(scaled_integrand, a, b, epsabs=0.0, epsrel=1e-13, limit=200)[0]
            for a, b in zip(splits[:-1], splits[1:])
        )
    if not total > 0:
        raise VaelabError(
            f"the quadrature gave {total}; the integrand vanishes where it was sampled: check peak and the interval"
        )
    return M * f_peak + math.log(total)
