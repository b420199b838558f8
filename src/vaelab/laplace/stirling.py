"""Stirling's series as Laplace's method: N! = N^{N+1} ∫_0^∞ exp(N (ln x - x)) dx, expanded at x0 = 1
from the exact derivatives of ln x - x, so that `factorial_series_coefficients` gives 1, 1/12, 1/288, …
as Fractions, `laplace_factorial` gives log N! to any order, and `factorial_relative_error` measures an
estimate against lgamma.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

from vaelab.laplace.common import _positive_finite
from vaelab.laplace.integral import laplace_integral
from vaelab.laplace.series import series_coefficients

__all__ = ["factorial_relative_error", "factorial_series_coefficients", "laplace_factorial"]


@functools.lru_cache(maxsize=None)
def _factorial_exponent_derivatives(n: int) -> tuple[Fraction, ...]:
    """f^(j)(1) for f = ln x - x, j = 0..n, exactly: -1, 0, then (-1)^{j-1} (j-1)!
    (from f^(j)(x) = (-1)^{j-1} (j-1)! x^{-j})."""
    return (Fraction(-1), Fraction(0)) + tuple(
        Fraction((-1) ** (j - 1) * math.factorial(j - 1)) for j in range(2, n + 1)
    )


def factorial_series_coefficients(order: int) -> list[Fraction]:
    """Stirling's series c_0..c_K = 1, 1/12, 1/288, -139/51840, ...: series_coefficients of
    f = ln x - x at x0 = 1, exact."""
    return series_coefficients(_factorial_exponent_derivatives(2 * order + 2), order)


def laplace_factorial(N: float, order: int = 0) -> float:
    """log N! = log Γ(N+1) ≈ (N+1) ln N + log ∫_0^∞ exp(N (ln x - x)) dx by Laplace at x0 = 1, in nats.

    Order 0 is Stirling's ln(sqrt(2πN) (N/e)^N); order k adds the series to N^-k with exact coefficients.
    N is any real > 0 (non-integers give Γ(N+1)).
    """
    N = _positive_finite("N", N)
    derivs = _factorial_exponent_derivatives(2 * order + 2)
    result = laplace_integral(None, N, lower=0.0, upper=math.inf, x0=1.0, order=order, derivatives=derivs)
    return (N + 1.0) * math.log(N) + result.log_value


def factorial_relative_error(N: float, log_estimate: float) -> float:
    """estimate / N! - 1 = expm1(log_estimate - lgamma(N+1)); float64 resolves it to ~1e-16 · ln N!."""
    return math.expm1(log_estimate - math.lgamma(_positive_finite("N", N) + 1.0))
