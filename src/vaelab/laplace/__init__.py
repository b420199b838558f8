"""Laplace's method: log ∫ exp(M f(x)) dx for large M, in one dimension to any order and in d dimensions.

    interior maximum x0, a = -f''(x0) > 0:   e^{M f(x0)} sqrt(2π/(M a)) [1 + c_1/M + c_2/M² + …]
    maximum at an end with f'(x0) = 0:        ½ e^{M f(x0)} sqrt(2π/(M a))           (half-Gaussian)
    maximum at an end with f'(x0) ≠ 0:        e^{M f(x0)} / (M |f'(x0)|)
    d dimensions, Hessian H at x0:            e^{M f(x0)} (2π/M)^{d/2} det(-H)^{-1/2}
    Stirling:                                 N! = N^{N+1} ∫_0^∞ exp(N (ln x - x)) dx

docs/laplace.md derives each line. Every estimate is returned in log space (nats, float64), so N = 10^8
or M = 10^6 neither overflows nor underflows. Derivatives of f come from Taylor-mode automatic
differentiation (a truncated power series pushed through f's torch calls), because repeated backward
passes grow the graph about fourfold per derivative. No training code is imported; mpmath and scipy
are imported only by `quadrature_log_integral`.

The package is split along the method's seams: `series` (the asymptotic series' coefficients and
Taylor-mode derivatives), `integral` (one dimension: the maximum, the interior series, the boundary
forms, the quadrature reference), `multivariate` (d dimensions and the Gaussian log evidence),
`stirling` (the factorial) and `common` (float64, log 2π, argument checks); every name is
re-exported here, so `vaelab.laplace.X` works as before.
"""

# Besides __all__, the old module's constants and the autograd fallback (tests compare Taylor mode with it).
from vaelab.laplace.common import DTYPE as DTYPE
from vaelab.laplace.common import LOG_2PI as LOG_2PI
from vaelab.laplace.integral import LaplaceResult, laplace_integral, quadrature_log_integral
from vaelab.laplace.multivariate import LaplaceResultND, gaussian_log_evidence, laplace_integral_nd
from vaelab.laplace.series import AUTOGRAD_MAX_DERIVATIVE as AUTOGRAD_MAX_DERIVATIVE
from vaelab.laplace.series import _autograd_derivatives as _autograd_derivatives
from vaelab.laplace.series import series_coefficients, taylor_derivatives
from vaelab.laplace.stirling import factorial_relative_error, factorial_series_coefficients, laplace_factorial

__all__ = [
    "LaplaceResult",
    "LaplaceResultND",
    "factorial_relative_error",
    "factorial_series_coefficients",
    "gaussian_log_evidence",
    "laplace_factorial",
    "laplace_integral",
    "laplace_integral_nd",
    "quadrature_log_integral",
    "series_coefficients",
    "taylor_derivatives",
]
