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
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Rational, Real
from typing import Any, Callable, Sequence

import torch

from vaelab.errors import VaelabError

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

DTYPE = torch.float64
LOG_2PI = math.log(2.0 * math.pi)

# Repeated autograd (the fallback when f uses an operation the Taylor series cannot pass through)
# grows its graph ~4x per derivative: 8 derivatives of ln x - x take 0.03 s, 11 take 4 s and 14
# exhaust memory (docs/laplace.md §3). 8 derivatives serve order 3.
AUTOGRAD_MAX_DERIVATIVE = 8
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
# the asymptotic series
# --------------------------------------------------------------------------------------------


def series_coefficients(derivs: Sequence[Any], order: int) -> list:
    """c_0..c_K of ∫ e^{M f} dx ≈ e^{M f0} sqrt(2π/(M a)) Σ_k c_k M^{-k}, a = -f''(x0), from derivs[j] = f^(j)(x0), j = 2..2K+2.

    With u ~ N(0, 1/a) and g_j = f^(j)/j!, exp(Σ_{m≥1} g_{m+2} u^{m+2} ε^m) = Σ_n B_n(u) ε^n, ε = M^{-1/2},
    and c_k = E[B_{2k}(u)], E[u^{2q}] = (2q-1)!!/a^q (docs/laplace.md §4). Exact Fractions when every
    derivs[j] is an int or Fraction; floats otherwise, evaluated exactly and rounded once.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise VaelabError(f"order must be an integer >= 0 (got {order!r})")
    needed = 2 * order + 3
    if len(derivs) < needed:
        raise VaelabError(f"order {order} needs f^(j)(x0) for j up to {needed - 1}: derivs must have {needed} entries (got {len(derivs)})")
    used = derivs[2:needed]
    exact = all(isinstance(d, Rational) and not isinstance(d, bool) for d in used)
    if not exact and not all(math.isfinite(float(d)) for d in used):
        raise VaelabError(f"the derivatives of f at x0 are not all finite ({[float(d) for d in used]}); f must be smooth at its maximum")
    # Floats enter as the exact binary fractions they are: the moment sum below cancels heavily
    # (in float arithmetic Stirling's c_5 keeps only 9 of 16 digits, c_7 only 3), rational arithmetic does not.
    rational = [d if isinstance(d, Rational) else Fraction(float(d)) for d in derivs[:needed]]
    a = -Fraction(rational[2])
    if not a > 0:
        raise VaelabError(f"f''(x0) = {float(derivs[2]):.6g} >= 0: x0 is not a strict maximum, so the series does not exist; give the maximum of f")
    taylor = {j: Fraction(rational[j]) / math.factorial(j) for j in range(3, needed)}  # g_j = f^(j)(x0) / j!

    # B_0 = 1, B_n = (1/n) Σ_{m=1}^{n} m A_m B_{n-m}: the power series of exp(A) for A = Σ_m A_m ε^m,
    # here A_m = g_{m+2} u^{m+2}. Each B_n is a polynomial in u stored as {power: coefficient}.
    series_in_eps: list[dict[int, Fraction]] = [{0: Fraction(1)}]
    for n in range(1, 2 * order + 1):
        polynomial: dict[int, Fraction] = {}
        for m in range(1, n + 1):
            g = taylor[m + 2]
            if g == 0:
                continue
            for power, coefficient in series_in_eps[n - m].items():
                polynomial[power + m + 2] = polynomial.get(power + m + 2, Fraction(0)) + coefficient * g * m / n
        series_in_eps.append(polynomial)

    coefficients = [Fraction(1)]
    for k in range(1, order + 1):
        # B_{2k} holds only even powers of u, whose Gaussian averages are (p-1)!!/a^{p/2}.
        coefficients.append(sum((c * _odd_double_factorial(p - 1) / a ** (p // 2) for p, c in series_in_eps[2 * k].items()), Fraction(0)))
    return coefficients if exact else [float(c) for c in coefficients]


def _odd_double_factorial(n: int) -> int:
    """n!! for odd n >= -1 ((-1)!! = 1): E[u^{n+1}] a^{(n+1)/2} for u ~ N(0, 1/a)."""
    return math.prod(range(n, 0, -2))


# --------------------------------------------------------------------------------------------
# derivatives: Taylor-mode automatic differentiation
# --------------------------------------------------------------------------------------------


class _UnsupportedOperation(TypeError):
    """f used an operation that _Jet cannot pass through; taylor_derivatives falls back to autograd."""


def _operator(rule_name: str, reflected: bool = False) -> Callable[..., Any]:
    """A Python operator method for _Jet: self ∘ other (other ∘ self when reflected), or ∘ self when unary."""

    def method(self: _Jet, *other: Any) -> _Jet:
        rule = _JET_RULES[rule_name]
        return rule(*other, self) if reflected else rule(self, *other)

    return method


class _Jet:
    """The truncated Taylor series Σ_{k≤n} coeffs[k] t^k of one quantity along x = x0 + t.

    torch calls dispatch to `_JET_RULES` through `__torch_function__`, so an f written with torch
    operations gives f(x0 + t) to order t^n, in O(n²) floating-point operations per call.
    """

    __slots__ = ("coeffs",)

    def __init__(self, coeffs: list[float]) -> None:
        self.coeffs = coeffs

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "").removeprefix("special_")
        rule = _JET_RULES.get(name)
        if rule is None or any(value is not None for value in (kwargs or {}).values()):
            raise _UnsupportedOperation(f"torch.{name}")
        return rule(*args)

    def __getattr__(self, name: str) -> Any:  # method calls such as x.exp(), x.pow(2)
        if name.startswith("__") or name not in _JET_RULES:
            raise AttributeError(f"vaelab's Taylor mode has no Tensor.{name}")
        return functools.partial(_JET_RULES[name], self)

    __add__, __radd__ = _operator("add"), _operator("add", reflected=True)
    __sub__, __rsub__ = _operator("sub"), _operator("sub", reflected=True)
    __mul__, __rmul__ = _operator("mul"), _operator("mul", reflected=True)
    __truediv__, __rtruediv__ = _operator("div"), _operator("div", reflected=True)
    __pow__, __rpow__ = _operator("pow"), _operator("pow", reflected=True)
    __neg__, __abs__, __pos__ = _operator("neg"), _operator("abs"), _operator("positive")


def _scalar(value: Any) -> float:
    """A number or one-element tensor as a float; anything else cannot enter a scalar Taylor series."""
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    raise _UnsupportedOperation(f"operand of type {type(value).__name__}")


def _coeffs(value: Any, n: int) -> list[float]:
    return value.coeffs if isinstance(value, _Jet) else [_scalar(value)] + [0.0] * n


def _order(*values: Any) -> int:
    return next(len(v.coeffs) - 1 for v in values if isinstance(v, _Jet))


def _at(name: str, x: float) -> float:
    """torch.<name> of a float64 scalar: IEEE inf/nan instead of Python's exceptions, same values as f on tensors."""
    return float(getattr(torch, name)(torch.tensor(x, dtype=DTYPE)))


def _jet_mul(a: list[float], b: list[float]) -> list[float]:
    return [sum(a[j] * b[k - j] for j in range(k + 1)) for k in range(len(a))]


def _jet_div(a: list[float], b: list[float]) -> list[float]:
    if b[0] == 0.0:
        return [math.nan] * len(a)
    quotient: list[float] = []
    for k in range(len(a)):
        quotient.append((a[k] - sum(b[j] * quotient[k - j] for j in range(1, k + 1))) / b[0])
    return quotient


def _from_derivative(a: list[float], h0: float, dh_da: list[float]) -> list[float]:
    """h(a(t)) from h(a0) and the series of h'(a): h' = h'(a) a' gives h_k = (1/k) Σ_{j=1}^k j a_j (h'(a))_{k-j}."""
    return [h0] + [sum(j * a[j] * dh_da[k - j] for j in range(1, k + 1)) / k for k in range(1, len(a))]


def _riccati(a: list[float], h0: float, alpha: float, beta: float, gamma: float) -> list[float]:
    """h(a(t)) for dh/da = α + β h + γ h² (exp, expm1, tan, tanh, sigmoid), built one coefficient at a time."""
    h = [h0]
    slope: list[float] = []  # coefficients of α + β h + γ h²
    for k in range(1, len(a)):
        m = k - 1
        slope.append((alpha if m == 0 else 0.0) + beta * h[m] + gamma * sum(h[i] * h[m - i] for i in range(m + 1)))
        h.append(sum(j * a[j] * slope[k - j] for j in range(1, k + 1)) / k)
    return h


def _jet_integer_power(a: list[float], exponent: int) -> list[float]:
    result = [1.0] + [0.0] * (len(a) - 1)
    base = a
    power = abs(exponent)
    while power:  # square-and-multiply stays exact at a(0) = 0, where a^r's recurrence divides by a(0)
        if power & 1:
            result = _jet_mul(result, base)
        base = _jet_mul(base, base)
        power >>= 1
    return _jet_div([1.0] + [0.0] * (len(a) - 1), result) if exponent < 0 else result


def _jet_real_power(a: list[float], r: float) -> list[float]:
    """a^r for a(0) > 0 from a p' = r a' p: p_k = (1/(k a_0)) Σ_{j=1}^k (r j - (k - j)) a_j p_{k-j}."""
    if not a[0] > 0.0:
        return [math.nan] * len(a)
    p = [a[0] ** r]
    for k in range(1, len(a)):
        p.append(sum((r * j - (k - j)) * a[j] * p[k - j] for j in range(1, k + 1)) / (k * a[0]))
    return p


def _jet_log(a: list[float]) -> list[float]:
    return _from_derivative(a, _at("log", a[0]), _jet_div([1.0] + [0.0] * (len(a) - 1), a))


def _jet_exp(a: list[float]) -> list[float]:
    return _riccati(a, _at("exp", a[0]), 0.0, 1.0, 0.0)


def _jet_pow(base: Any, exponent: Any) -> _Jet:
    n = _order(base, exponent)
    if not isinstance(exponent, _Jet):
        r = _scalar(exponent)
        a = _coeffs(base, n)
        if r.is_integer() and abs(r) <= 1024:
            return _Jet(_jet_integer_power(a, int(r)))
        return _Jet(_jet_real_power(a, r))
    # b^e = exp(e log b) for a varying exponent; needs b > 0.
    return _Jet(_jet_exp(_jet_mul(_coeffs(exponent, n), _jet_log(_coeffs(base, n)))))


def _sin_cos(a: list[float], hyperbolic: bool) -> tuple[list[float], list[float]]:
    """(sin a, cos a) or (sinh a, cosh a): s' = c a', c' = ∓ s a', filled in together."""
    sign = 1.0 if hyperbolic else -1.0
    s = [_at("sinh" if hyperbolic else "sin", a[0])]
    c = [_at("cosh" if hyperbolic else "cos", a[0])]
    for k in range(1, len(a)):
        s.append(sum(j * a[j] * c[k - j] for j in range(1, k + 1)) / k)
        c.append(sign * sum(j * a[j] * s[k - j] for j in range(1, k + 1)) / k)
    return s, c


def _compose(a: list[float], outer: list[float]) -> list[float]:
    """F(a(t)) from F's Taylor coefficients at a(0): Horner in s = a - a(0), which has no constant term."""
    s = [0.0] + a[1:]
    result = [outer[-1]] + [0.0] * (len(a) - 1)
    for coefficient in reversed(outer[:-1]):
        result = _jet_mul(result, s)
        result[0] += coefficient
    return result


def _polygamma_series(a: list[float], first: int) -> list[float]:
    """Taylor coefficients at a(0) of lgamma (first = -1) or digamma (first = 0): ψ^{(m+first)}(a0)/m!."""
    x = torch.tensor(a[0], dtype=DTYPE)
    value = float(torch.lgamma(x)) if first < 0 else float(torch.digamma(x))
    return [value] + [float(torch.special.polygamma(m + first, x)) / math.factorial(m) for m in range(1, len(a))]


def _unary(rule: Callable[[list[float]], list[float]]) -> Callable[[Any], _Jet]:
    return lambda value: _Jet(rule(_coeffs(value, 0)))


def _binary(rule: Callable[[list[float], list[float]], list[float]]) -> Callable[[Any, Any], _Jet]:
    def apply(left: Any, right: Any) -> _Jet:
        n = _order(left, right)
        return _Jet(rule(_coeffs(left, n), _coeffs(right, n)))

    return apply


def _jet_abs(a: list[float]) -> list[float]:
    if a[0] == 0.0:
        return [math.nan] * len(a)  # |a| has no Taylor series where a = 0
    return a if a[0] > 0.0 else [-c for c in a]


def _jet_where(condition: Any, left: Any, right: Any) -> Any:
    return left if bool(condition) else right


def _one_plus(a: list[float], scale: float = 1.0) -> list[float]:
    """1 + scale·a as a series."""
    return [1.0 + scale * a[0]] + [scale * c for c in a[1:]]


def _build_rules() -> dict[str, Callable[..., Any]]:
    add = _binary(lambda a, b: [x + y for x, y in zip(a, b)])
    sub = _binary(lambda a, b: [x - y for x, y in zip(a, b)])
    mul = _binary(_jet_mul)
    div = _binary(_jet_div)
    one = lambda a: [1.0] + [0.0] * (len(a) - 1)  # noqa: E731
    rules: dict[str, Callable[..., Any]] = {
        "exp": _unary(_jet_exp),
        "expm1": _unary(lambda a: _riccati(a, _at("expm1", a[0]), 1.0, 1.0, 0.0)),
        "log": _unary(_jet_log),
        "log1p": _unary(lambda a: _from_derivative(a, _at("log1p", a[0]), _jet_div(one(a), _one_plus(a)))),
        "sin": _unary(lambda a: _sin_cos(a, hyperbolic=False)[0]),
        "cos": _unary(lambda a: _sin_cos(a, hyperbolic=False)[1]),
        "sinh": _unary(lambda a: _sin_cos(a, hyperbolic=True)[0]),
        "cosh": _unary(lambda a: _sin_cos(a, hyperbolic=True)[1]),
        "tan": _unary(lambda a: _riccati(a, _at("tan", a[0]), 1.0, 0.0, 1.0)),
        "tanh": _unary(lambda a: _riccati(a, _at("tanh", a[0]), 1.0, 0.0, -1.0)),
        "sigmoid": _unary(lambda a: _riccati(a, _at("sigmoid", a[0]), 0.0, 1.0, -1.0)),
        "softplus": _unary(lambda a: _from_derivative(a, float(torch.nn.functional.softplus(torch.tensor(a[0], dtype=DTYPE))), _riccati(a, _at("sigmoid", a[0]), 0.0, 1.0, -1.0))),
        "sqrt": _unary(lambda a: _jet_real_power(a, 0.5)),
        "rsqrt": _unary(lambda a: _jet_real_power(a, -0.5)),
        "reciprocal": _unary(lambda a: _jet_div(one(a), a)),
        "square": _unary(lambda a: _jet_mul(a, a)),
        "abs": _unary(_jet_abs),
        "atan": _unary(lambda a: _from_derivative(a, _at("atan", a[0]), _jet_div(one(a), _one_plus(_jet_mul(a, a))))),
        "asin": _unary(lambda a: _from_derivative(a, _at("asin", a[0]), _jet_real_power(_one_plus(_jet_mul(a, a), -1.0), -0.5))),
        "acos": _unary(lambda a: _from_derivative(a, _at("acos", a[0]), [-c for c in _jet_real_power(_one_plus(_jet_mul(a, a), -1.0), -0.5)])),
        "asinh": _unary(lambda a: _from_derivative(a, _at("asinh", a[0]), _jet_real_power(_one_plus(_jet_mul(a, a)), -0.5))),
        "erf": _unary(lambda a: _from_derivative(a, _at("erf", a[0]), [2.0 / math.sqrt(math.pi) * c for c in _jet_exp([-c for c in _jet_mul(a, a)])])),
        "erfc": _unary(lambda a: _from_derivative(a, _at("erfc", a[0]), [-2.0 / math.sqrt(math.pi) * c for c in _jet_exp([-c for c in _jet_mul(a, a)])])),
        "lgamma": _unary(lambda a: _compose(a, _polygamma_series(a, -1))),
        "digamma": _unary(lambda a: _compose(a, _polygamma_series(a, 0))),
        "neg": _unary(lambda a: [-c for c in a]),
        "positive": _unary(lambda a: a),
        "add": add,
        "sub": sub,
        "rsub": lambda left, right: sub(right, left),
        "mul": mul,
        "div": div,
        "pow": _jet_pow,
        "where": _jet_where,
    }
    aliases = {
        "negative": "neg", "__neg__": "neg", "__pos__": "positive", "absolute": "abs", "arctan": "atan",
        "arcsin": "asin", "arccos": "acos", "arcsinh": "asinh", "expit": "sigmoid", "gammaln": "lgamma",
        "psi": "digamma", "__add__": "add", "__radd__": "add", "subtract": "sub", "__sub__": "sub",
        "__rsub__": "rsub", "multiply": "mul", "__mul__": "mul", "__rmul__": "mul", "divide": "div",
        "true_divide": "div", "__truediv__": "div", "__div__": "div", "__pow__": "pow", "float_power": "pow",
    }
    rules.update({alias: rules[name] for alias, name in aliases.items()})
    # Reflected operators receive (self, other) and mean other ∘ self.
    rules["__rtruediv__"] = rules["__rdiv__"] = lambda this, other: div(other, this)
    rules["__rpow__"] = lambda this, other: _jet_pow(other, this)
    return rules


_JET_RULES = _build_rules()


def taylor_derivatives(f: Callable[[torch.Tensor], torch.Tensor], x0: float, n: int) -> tuple[float, ...]:
    """(f(x0), f'(x0), ..., f^(n)(x0)) as floats; f maps a float64 scalar tensor to a scalar tensor.

    Taylor mode first (exact up to rounding, O(n²) per operation); if f uses an operation it does not
    cover, repeated autograd, which is limited to AUTOGRAD_MAX_DERIVATIVE derivatives.
    """
    x0 = float(x0)
    seed = _Jet(([x0, 1.0] + [0.0] * n)[: n + 1])
    try:
        output = f(seed)
        if not isinstance(output, _Jet):
            raise _UnsupportedOperation("an f whose output does not carry x")
        coeffs = output.coeffs
    except (TypeError, AttributeError) as error:
        if n > AUTOGRAD_MAX_DERIVATIVE:
            raise VaelabError(
                f"f uses an operation ({error}) that vaelab's Taylor-mode differentiation does not cover, and repeated "
                f"autograd cannot reach {n} derivatives (at most {AUTOGRAD_MAX_DERIVATIVE}, i.e. order "
                f"{(AUTOGRAD_MAX_DERIVATIVE - 2) // 2}); lower the order, rewrite f with elementwise torch functions "
                "(exp, log, sin, tanh, pow, lgamma, ...) or pass the derivatives yourself"
            ) from None
        return _autograd_derivatives(f, x0, n)
    return tuple(c * math.factorial(k) for k, c in enumerate(coeffs))


def _autograd_derivatives(f: Callable[[torch.Tensor], torch.Tensor], x0: float, n: int) -> tuple[float, ...]:
    """The same derivatives by n nested backward passes (create_graph=True)."""
    x = torch.tensor(x0, dtype=DTYPE, requires_grad=True)
    with torch.enable_grad():
        try:
            y = f(x)
        except Exception as error:
            raise VaelabError(f"evaluating f at x = {x0!r} failed ({type(error).__name__}: {error}); f must take a float64 tensor and use torch functions") from None
        if not isinstance(y, torch.Tensor) or y.numel() != 1:
            raise VaelabError(f"f must return a one-element torch tensor (got {type(y).__name__}); build it from torch functions of x")
        if n > 0 and not y.requires_grad:
            raise VaelabError("f(x) does not depend on x through torch operations (math.* or .item() inside f cut the gradient); write f with torch functions")
        derivatives = [float(y.detach())]
        for _ in range(n):
            if not y.requires_grad:  # a derivative that no longer depends on x: the rest are zero
                derivatives.append(0.0)
                continue
            (y,) = torch.autograd.grad(y.reshape(()), x, create_graph=True, allow_unused=True, materialize_grads=True)
            derivatives.append(float(y.detach()))
    return tuple(derivatives)


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
                raise VaelabError(f"evaluating f failed ({type(error).__name__}: {error}); f must map a float64 tensor x to a tensor of the same shape") from None
    return values


def _first_nonfinite(xs: torch.Tensor, values: torch.Tensor) -> None:
    bad = torch.isnan(values) | (values == math.inf)
    if bool(bad.any()):
        index = int(bad.nonzero()[0])
        raise VaelabError(f"f({float(xs[index]):.6g}) = {float(values[index])}: f must be finite (or -inf) on the interval; restrict the interval to where f is defined")


def _locate_maximum(f: Callable, lower: float, upper: float, init: float | None, M: float, tol: float) -> float:
    """The x in [lower, upper] where f is largest: a grid search (grown outwards on an infinite interval), then Newton."""
    if math.isfinite(lower) and math.isfinite(upper):
        centre, half_width = 0.5 * (lower + upper), 0.5 * (upper - lower)
    else:
        if init is not None:
            centre = float(init)
        else:
            centre = lower + 1.0 if math.isfinite(lower) else upper - 1.0 if math.isfinite(upper) else 0.0
        if not lower <= centre <= upper:
            raise VaelabError(f"init = {centre} lies outside the interval [{lower}, {upper}]; start the search inside it")
        half_width = 1.0
    for _ in range(_MAX_WINDOW_GROWTHS):
        left, right = max(lower, centre - half_width), min(upper, centre + half_width)
        xs = torch.linspace(left, right, _GRID_POINTS, dtype=DTYPE)
        values = _values_on_grid(f, xs)
        _first_nonfinite(xs, values)
        best = int(torch.argmax(values))
        if values[best] == -math.inf:
            raise VaelabError(f"f = -inf everywhere on [{left:.6g}, {right:.6g}]: the integrand is zero there; choose an interval where f is finite")
        grows_left = best == 0 and left > lower
        grows_right = best == _GRID_POINTS - 1 and right < upper
        if not (grows_left or grows_right):
            break
        half_width *= 4.0
    else:
        side = "-inf" if grows_left else "+inf"
        raise VaelabError(f"f keeps increasing towards {side} (searched out to |x| ~ {half_width:.3g}): there is no maximum and ∫ exp(M f) diverges; give a finite interval end or a different f")
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
            f"(M·(difference in f) = {float(M * (values[best] - values[other])):.3g} < {_COMPETING_PEAK_GAP:g}), so one "
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
            raise VaelabError(f"order {order} needs derivatives (f(x0), f'(x0), ..., f^({needed - 1})(x0)): {needed} values (got {len(derivatives)})")
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
        raise VaelabError(f"f or its derivatives are not finite at x0 = {x0:.17g} ({[float(d) for d in derivs]}); f must be smooth and finite at its maximum")
    f0, f1, f2 = (float(d) for d in derivs[:3])

    if not at_end and f2 < 0 and f is not None and derivatives is None:
        # A maximum closer to an end than the stationarity tolerance is numerically at that end.
        nearest_end = lower if x0 - lower <= upper - x0 else upper
        if abs(x0 - nearest_end) * math.sqrt(M * -f2) <= stationary_tol:
            return laplace_integral(f, M, lower=lower, upper=upper, x0=nearest_end, order=order, allow_boundary=allow_boundary, stationary_tol=stationary_tol)
    if at_end:
        return _boundary_estimate(x0, f0, f1, f2, M, lower, upper, order, allow_boundary, stationary_tol)

    if not f2 < 0:
        raise VaelabError(f"f''(x0) = {f2 + 0.0:.6g} >= 0 at x0 = {x0:.17g}: not a strict maximum, so the Gaussian width 1/sqrt(M |f''|) does not exist; give x0 where f'' < 0 (a degenerate maximum needs another method)")
    shift_in_widths = abs(f1) * math.sqrt(M / -f2)  # |f'/f''| (Newton's distance to the peak) over the width 1/sqrt(M a)
    if shift_in_widths > stationary_tol:
        raise VaelabError(f"x0 = {x0:.17g} is not a stationary point: f'(x0) = {f1:.6g}, so the maximum is ~{abs(f1 / f2):.3g} away ({shift_in_widths:.3g} peak widths); omit x0 and let laplace_integral find the maximum")
    coefficients = series_coefficients(derivs, order)
    correction = sum(float(c) * M ** (-k) for k, c in enumerate(coefficients) if k > 0)
    if not correction > -1.0:
        raise VaelabError(f"the series 1 + Σ c_k/M^k = {1.0 + correction:.6g} is not positive at M = {M:g}, order {order}: M is too small for this order; lower the order or raise M")
    log_value = M * f0 + 0.5 * (LOG_2PI - math.log(M * -f2)) + math.log1p(correction)
    return LaplaceResult(log_value, x0, f0, f1, f2, M, order, "interior", tuple(coefficients))


def _boundary_estimate(x0: float, f0: float, f1: float, f2: float, M: float, lower: float, upper: float, order: int, allow_boundary: bool, tol: float) -> LaplaceResult:
    """Half-Gaussian (f'(x0) = 0) or endpoint (f'(x0) ≠ 0) form at an end of the interval, order 0."""
    end = "lower" if x0 == lower else "upper"
    if not allow_boundary:
        raise VaelabError(f"the maximum of f on [{lower}, {upper}] is at the {end} end x0 = {x0:.6g}, not inside: there is no interior maximum; widen the interval, or pass allow_boundary=True for the half-Gaussian / endpoint forms")
    if order > 0:
        raise VaelabError(f"the maximum is at the {end} end x0 = {x0:.6g}, where only order 0 is implemented (the interior series does not apply at an end); use order 0")
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
        raise VaelabError(f"f'(x0) = 0 and f''(x0) = {f2:.6g} >= 0 at the {end} end x0 = {x0:.6g}: not a maximum; give the interval where f has its maximum")
    raise VaelabError(f"f increases into the interval from the {end} end x0 = {x0:.6g} (f'(x0) = {f1:.6g}): the maximum lies inside; give x0 there or omit it")


def _positive_finite(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise VaelabError(f"{name} must be a positive number (got {value!r})") from None
    if not (math.isfinite(number) and number > 0):
        raise VaelabError(f"{name} must be positive and finite (got {value!r})")
    return number


# --------------------------------------------------------------------------------------------
# the factorial
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _factorial_exponent_derivatives(n: int) -> tuple[Fraction, ...]:
    """f^(j)(1) for f = ln x - x, j = 0..n, exactly: -1, 0, then (-1)^{j-1} (j-1)! (from f^(j)(x) = (-1)^{j-1} (j-1)! x^{-j})."""
    return (Fraction(-1), Fraction(0)) + tuple(Fraction((-1) ** (j - 1) * math.factorial(j - 1)) for j in range(2, n + 1))


def factorial_series_coefficients(order: int) -> list[Fraction]:
    """Stirling's series c_0..c_K = 1, 1/12, 1/288, -139/51840, ...: series_coefficients of f = ln x - x at x0 = 1, exact."""
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


# --------------------------------------------------------------------------------------------
# reference quadrature (optional extras)
# --------------------------------------------------------------------------------------------


def quadrature_log_integral(f: Callable[[torch.Tensor], torch.Tensor], M: float, lower: float = -math.inf, upper: float = math.inf, *, peak: float, width: float | None = None) -> float:
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
            raise VaelabError(f"f({float(x):.6g}) = {value} inside the quadrature interval; restrict the interval to where f is defined")
        return math.exp(M * (value - f_peak))

    splits = sorted({lower, upper} | {peak + s * width for s in (-10, -1, 0, 1, 10) if lower < peak + s * width < upper})
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
        total = sum(quad(scaled_integrand, a, b, epsabs=0.0, epsrel=1e-13, limit=200)[0] for a, b in zip(splits[:-1], splits[1:]))
    if not total > 0:
        raise VaelabError(f"the quadrature gave {total}; the integrand vanishes where it was sampled: check peak and the interval")
    return M * f_peak + math.log(total)


# --------------------------------------------------------------------------------------------
# d dimensions
# --------------------------------------------------------------------------------------------


def gaussian_log_evidence(log_peak: torch.Tensor, neg_hessian: torch.Tensor) -> torch.Tensor:
    """log ∫ exp(log_peak - ½ zᵀ(-H)z) dz = log_peak + (d/2) log 2π - ½ log det(-H): (...,), (..., d, d) -> (...,), nats, float64.

    The Laplace evidence log p(x) ≈ log p(x, z*) + (d/2) log 2π - ½ log det(-H) (M = 1); log det by Cholesky.
    """
    log_peak = torch.as_tensor(log_peak, dtype=DTYPE)
    neg_hessian = torch.as_tensor(neg_hessian, dtype=DTYPE)
    if neg_hessian.ndim < 2 or neg_hessian.shape[-1] != neg_hessian.shape[-2] or neg_hessian.shape[:-2] != log_peak.shape:
        raise VaelabError(f"neg_hessian must be (..., d, d) with log_peak (...,) (got {tuple(neg_hessian.shape)} and {tuple(log_peak.shape)}); stack one d x d matrix per log_peak entry")
    dimension = neg_hessian.shape[-1]
    nonfinite = ~(torch.isfinite(log_peak) & torch.isfinite(neg_hessian).all(-1).all(-1))
    if bool(nonfinite.any()):
        bad = [index[0] if len(index) == 1 else tuple(index) for index in nonfinite.nonzero().tolist()]
        raise VaelabError(f"log_peak or neg_hessian is not finite at batch item(s) {bad[:5]}; check the maximisation that produced them")
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
    """log ∫_{R^d} exp(M f(x)) dx ≈ M f(x0) + (d/2) log(2π/M) - ½ log det(-H), H = ∇²f(x0) by torch.func.jacrev twice, nats.

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
        raise VaelabError(f"-H at x0 is not positive definite (eigenvalues of -H: {[round(v, 6) for v in eigenvalues.tolist()]}): x0 is not a strict maximum (a saddle or minimum); give the maximum of f")
    shift_in_widths = math.sqrt(M * max(float(gradient @ torch.cholesky_solve(gradient[:, None], cholesky)[:, 0]), 0.0))
    if shift_in_widths > stationary_tol:
        raise VaelabError(f"x0 is not a stationary point: |∇f(x0)| = {float(gradient.norm()):.3g}, {shift_in_widths:.3g} peak widths from the maximum; pass init instead of x0 to let Newton find it")
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
        raise VaelabError(f"differentiating f failed ({type(error).__name__}: {error}); f must map a float64 (d,) tensor to a scalar with torch functions") from None
    hessian = hessian.reshape(x.numel(), x.numel())
    if not (bool(torch.isfinite(value)) and bool(torch.isfinite(gradient).all()) and bool(torch.isfinite(hessian).all())):
        raise VaelabError(f"f, its gradient or its Hessian is not finite at x = {x.tolist()}; f must be smooth and finite near its maximum")
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
    raise VaelabError(f"Newton did not reach a maximum of f from init within {max_steps} steps and {fallbacks} L-BFGS restarts (stopped at x = {x.tolist()}); f may have no maximum, or start closer to it or pass x0")


def _lbfgs_ascent(f: Callable, x: torch.Tensor) -> torch.Tensor:
    """Maximise f from x with L-BFGS (strong Wolfe line search), which needs no concavity."""
    point = x.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([point], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, history_size=20, line_search_fn="strong_wolfe")

    def negative_f() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -f(point)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(negative_f)
    result = point.detach()
    if not bool(torch.isfinite(result).all()):
        raise VaelabError("L-BFGS ran off to non-finite x while looking for the maximum of f: f may be unbounded above (no maximum); check f, or start closer to its maximum or pass x0")
    return result
