"""The asymptotic series and the derivatives it is built from: `series_coefficients` turns f^(j)(x0)
into the coefficients c_k of Laplace's series 1 + c_1/M + c_2/M² + … (exact Fractions from rational
derivatives), and `taylor_derivatives` computes f^(j)(x0) by Taylor-mode automatic differentiation, a
truncated power series (`_Jet`) pushed through f's torch calls, falling back to repeated autograd
(`_autograd_derivatives`) when f uses an operation the series cannot pass through.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from numbers import Rational, Real
from typing import Any, Callable, Sequence

import torch

from vaelab.errors import VaelabError
from vaelab.laplace.common import DTYPE

__all__ = ["AUTOGRAD_MAX_DERIVATIVE", "series_coefficients", "taylor_derivatives"]

# Repeated autograd (the fallback when f uses an operation the Taylor series cannot pass through)
# grows its graph ~4x per derivative: 8 derivatives of ln x - x take 0.03 s, 11 take 4 s and 14
# exhaust memory (docs/laplace.md §3). 8 derivatives serve order 3.
AUTOGRAD_MAX_DERIVATIVE = 8


# --------------------------------------------------------------------------------------------
# the asymptotic series
# --------------------------------------------------------------------------------------------


def series_coefficients(derivs: Sequence[Any], order: int) -> list:
    """c_0..c_K of ∫ e^{M f} dx ≈ e^{M f0} sqrt(2π/(M a)) Σ_k c_k M^{-k}, a = -f''(x0),
    from derivs[j] = f^(j)(x0), j = 2..2K+2.

    With u ~ N(0, 1/a) and g_j = f^(j)/j!, exp(Σ_{m≥1} g_{m+2} u^{m+2} ε^m) = Σ_n B_n(u) ε^n, ε = M^{-1/2},
    and c_k = E[B_{2k}(u)], E[u^{2q}] = (2q-1)!!/a^q (docs/laplace.md §4). Exact Fractions when every
    derivs[j] is an int or Fraction; floats otherwise, evaluated exactly and rounded once.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise VaelabError(f"order must be an integer >= 0 (got {order!r})")
    needed = 2 * order + 3
    if len(derivs) < needed:
        raise VaelabError(
            f"order {order} needs f^(j)(x0) for j up to {needed - 1}: derivs "
            f"must have {needed} entries (got {len(derivs)})"
        )
    used = derivs[2:needed]
    exact = all(isinstance(d, Rational) and not isinstance(d, bool) for d in used)
    if not exact and not all(math.isfinite(float(d)) for d in used):
        raise VaelabError(
            "the derivatives of f at x0 are not all finite "
            f"({[float(d) for d in used]}); f must be smooth at its maximum"
        )
    # Floats enter as the exact binary fractions they are: the moment sum below cancels heavily
    # (in float arithmetic Stirling's c_5 keeps only 9 of 16 digits, c_7 only 3), rational arithmetic does not.
    rational = [d if isinstance(d, Rational) else Fraction(float(d)) for d in derivs[:needed]]
    a = -Fraction(rational[2])
    if not a > 0:
        raise VaelabError(
            f"f''(x0) = {float(derivs[2]):.6g} >= 0: x0 is not a strict maximum, "
            "so the series does not exist; give the maximum of f"
        )
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
        coefficients.append(
            sum(
                (c * _odd_double_factorial(p - 1) / a ** (p // 2) for p, c in series_in_eps[2 * k].items()), Fraction(0)
            )
        )
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
        "softplus": _unary(
            lambda a: _from_derivative(
                a,
                float(torch.nn.functional.softplus(torch.tensor(a[0], dtype=DTYPE))),
                _riccati(a, _at("sigmoid", a[0]), 0.0, 1.0, -1.0),
            )
        ),
        "sqrt": _unary(lambda a: _jet_real_power(a, 0.5)),
        "rsqrt": _unary(lambda a: _jet_real_power(a, -0.5)),
        "reciprocal": _unary(lambda a: _jet_div(one(a), a)),
        "square": _unary(lambda a: _jet_mul(a, a)),
        "abs": _unary(_jet_abs),
        "atan": _unary(lambda a: _from_derivative(a, _at("atan", a[0]), _jet_div(one(a), _one_plus(_jet_mul(a, a))))),
        "asin": _unary(
            lambda a: _from_derivative(a, _at("asin", a[0]), _jet_real_power(_one_plus(_jet_mul(a, a), -1.0), -0.5))
        ),
        "acos": _unary(
            lambda a: _from_derivative(
                a, _at("acos", a[0]), [-c for c in _jet_real_power(_one_plus(_jet_mul(a, a), -1.0), -0.5)]
            )
        ),
        "asinh": _unary(
            lambda a: _from_derivative(a, _at("asinh", a[0]), _jet_real_power(_one_plus(_jet_mul(a, a)), -0.5))
        ),
        "erf": _unary(
            lambda a: _from_derivative(
                a, _at("erf", a[0]), [2.0 / math.sqrt(math.pi) * c for c in _jet_exp([-c for c in _jet_mul(a, a)])]
            )
        ),
        "erfc": _unary(
            lambda a: _from_derivative(
                a, _at("erfc", a[0]), [-2.0 / math.sqrt(math.pi) * c for c in _jet_exp([-c for c in _jet_mul(a, a)])]
            )
        ),
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
        "negative": "neg",
        "__neg__": "neg",
        "__pos__": "positive",
        "absolute": "abs",
        "arctan": "atan",
        "arcsin": "asin",
        "arccos": "acos",
        "arcsinh": "asinh",
        "expit": "sigmoid",
        "gammaln": "lgamma",
        "psi": "digamma",
        "__add__": "add",
        "__radd__": "add",
        "subtract": "sub",
        "__sub__": "sub",
        "__rsub__": "rsub",
        "multiply": "mul",
        "__mul__": "mul",
        "__rmul__": "mul",
        "divide": "div",
        "true_divide": "div",
        "__truediv__": "div",
        "__div__": "div",
        "__pow__": "pow",
        "float_power": "pow",
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
            raise VaelabError(
                f"evaluating f at x = {x0!r} failed ({type(error).__name__}: {error}); "
                "f must take a float64 tensor and use torch functions"
            ) from None
        if not isinstance(y, torch.Tensor) or y.numel() != 1:
            raise VaelabError(
                f"f must return a one-element torch tensor (got {type(y).__name__}); build it from torch functions of x"
            )
        if n > 0 and not y.requires_grad:
            raise VaelabError(
                "f(x) does not depend on x through torch operations (math.* or .item() "
                "inside f cut the gradient); write f with torch functions"
            )
        derivatives = [float(y.detach())]
        for _ in range(n):
            if not y.requires_grad:  # a derivative that no longer depends on x: the rest are zero
                derivatives.append(0.0)
                continue
            (y,) = torch.autograd.grad(y.reshape(()), x, create_graph=True, allow_unused=True, materialize_grads=True)
            derivatives.append(float(y.detach()))
    return tuple(derivatives)
