"""`vaelab laplace`: argparse wiring, tables and the error plot for Laplace's method (the maths is in vaelab.laplace).

vaelab laplace factorial --n 1 2 5 10 100 1000 --order 0 1 2 3 [--plot FILE.png]
vaelab laplace integral "cos(x)" --M 20 --a=-pi --b pi --order 0 1 2 [--x0 X] [--no-quadrature]
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from vaelab.errors import VaelabError

# torch, vaelab.laplace and matplotlib are imported inside the functions that use them, so that
# building the main parser (every vaelab command) does not load them.
if TYPE_CHECKING:
    import torch

DEFAULT_N = (1.0, 2.0, 5.0, 10.0, 100.0, 1000.0)
DEFAULT_FACTORIAL_ORDERS = (0, 1, 2, 3)
DEFAULT_INTEGRAL_ORDERS = (0, 1, 2)
DEFAULT_M = 10.0
PLOT_POINTS = 120  # N values per curve, log-spaced between the smallest and largest --n

# torch functions an integrand expression may call by name, besides x, pi, e, inf, softplus and torch.
EXPRESSION_FUNCTIONS = (
    "sin",
    "cos",
    "tan",
    "sinh",
    "cosh",
    "tanh",
    "asin",
    "acos",
    "atan",
    "asinh",
    "exp",
    "expm1",
    "log",
    "log1p",
    "sqrt",
    "rsqrt",
    "erf",
    "erfc",
    "lgamma",
    "digamma",
    "sigmoid",
    "abs",
    "square",
    "where",
)


def add_parser(subparsers: Any) -> None:
    """Register `vaelab laplace factorial|integral` on the main parser's subparsers; func=run."""
    parser = subparsers.add_parser(
        "laplace",
        help="Laplace's method: Stirling's series for N!, or any ∫ exp(M f(x)) dx",
        description="Laplace's method to any order (docs/laplace.md): the "
        "factorial N! = N^(N+1) ∫ exp(N (ln x - x)) dx, "
        "or a one-dimensional integral of your own, compared with exact values.",
    )
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(dest="laplace_command", required=True, metavar="{factorial,integral}")

    factorial = commands.add_parser(
        "factorial",
        help="ln N! by Laplace's method at each order, against lgamma",
        description="Table of N, the exact ln N! (math.lgamma), and each "
        "order's Laplace estimate with its relative error.",
    )
    factorial.add_argument(
        "--n",
        type=float,
        nargs="+",
        default=list(DEFAULT_N),
        metavar="N",
        help=f"values of N (> 0; non-integers give Γ(N+1)) (default: {' '.join(f'{n:g}' for n in DEFAULT_N)})",
    )
    factorial.add_argument(
        "--order",
        type=int,
        nargs="+",
        default=list(DEFAULT_FACTORIAL_ORDERS),
        metavar="K",
        help=f"orders of the series, 0 = Stirling's formula (default: {' '.join(map(str, DEFAULT_FACTORIAL_ORDERS))})",
    )
    factorial.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help=f"also write a log-log plot of |relative error| against N per order, {PLOT_POINTS} N values "
        "spanning the --n range (default: no plot)",
    )

    integral = commands.add_parser(
        "integral",
        help="Laplace's estimate of ∫ exp(M f(x)) dx for your f, beside quadrature",
        description="Laplace's estimate of log ∫_a^b exp(M f(x)) dx at each order, beside adaptive quadrature "
        "(mpmath.quad, else scipy), for f given as an expression in x or as module:function.",
    )
    integral.add_argument(
        "f",
        help="the exponent f(x): a Python expression in x using torch functions "
        '(sin, cos, exp, log, sqrt, tanh, lgamma, ..., pi, e), e.g. "cos(x)", or module:function '
        "taking a float64 tensor (required)",
    )
    integral.add_argument(
        "--M", type=_real, default=DEFAULT_M, help=f"the large parameter M > 0 (default: {DEFAULT_M:g})"
    )
    integral.add_argument(
        "--a",
        type=_real,
        default=-math.inf,
        help="lower end of the interval; numbers, pi, inf and arithmetic "
        "allowed; write a negative one as --a=-pi (default: -inf)",
    )
    integral.add_argument("--b", type=_real, default=math.inf, help="upper end of the interval, as --a (default: inf)")
    integral.add_argument(
        "--x0",
        type=_real,
        default=None,
        help="the maximum of f, checked; negative as --x0=-1 (default: found by a grid search and Newton)",
    )
    integral.add_argument(
        "--init",
        type=_real,
        default=None,
        help="where the search starts on an infinite interval (default: 1 inside a finite end, else 0)",
    )
    integral.add_argument(
        "--order",
        type=int,
        nargs="+",
        default=list(DEFAULT_INTEGRAL_ORDERS),
        metavar="K",
        help="orders of the series; a maximum at an end allows only 0 "
        f"(default: {' '.join(map(str, DEFAULT_INTEGRAL_ORDERS))})",
    )
    integral.add_argument(
        "--no-quadrature",
        action="store_true",
        help="skip the quadrature column, e.g. without mpmath or scipy installed (default: quadrature on)",
    )


def run(args: argparse.Namespace) -> int:
    """Run `vaelab laplace factorial` or `vaelab laplace integral`; print a Markdown table; 0 on success."""
    if args.laplace_command == "factorial":
        return _run_factorial(args)
    return _run_integral(args)


# --------------------------------------------------------------------------------------------
# vaelab laplace factorial
# --------------------------------------------------------------------------------------------


def _run_factorial(args: argparse.Namespace) -> int:
    orders = _orders(args.order)
    if args.plot is not None:
        _check_writable(args.plot)
    print(factorial_table(args.n, orders))
    if args.plot is not None:
        factorial_error_figure(min(args.n), max(args.n), orders).savefig(args.plot)
        print(f"wrote {args.plot}")
    return 0


def factorial_table(n_values: Sequence[float], orders: Sequence[int]) -> str:
    """Markdown table: N, ln N! by lgamma, and per order the Laplace estimate of ln N! and its relative error in N!."""
    from vaelab import laplace

    header = ["N", "ln N! (lgamma)"]
    for order in orders:
        header += [f"order {order}: ln N!", f"order {order}: rel. error"]
    rows = []
    for n in n_values:
        estimates = [laplace.laplace_factorial(n, order) for order in orders]  # also refuses N <= 0
        row = [f"{n:g}", f"{math.lgamma(n + 1.0):.16g}"]
        for estimate in estimates:
            row += [f"{estimate:.16g}", f"{laplace.factorial_relative_error(n, estimate):.3e}"]
        rows.append(row)
    return markdown_table(header, rows)


def factorial_error_figure(n_min: float, n_max: float, orders: Sequence[int]) -> Any:
    """Log-log |estimate/N! - 1| against N per order, with |c_{k+1}| N^-(k+1) dotted and float64's resolution dashed."""
    from matplotlib.figure import Figure

    from vaelab import laplace

    if n_max > n_min:
        n_values = [n_min * (n_max / n_min) ** (i / (PLOT_POINTS - 1)) for i in range(PLOT_POINTS)]
    else:
        n_values = [n_min]
    figure = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    highest = max(orders)
    stirling = laplace.factorial_series_coefficients(highest + 1)
    for order in orders:
        errors = [abs(laplace.factorial_relative_error(n, laplace.laplace_factorial(n, order))) for n in n_values]
        # Errors below float64's resolution come out as exactly 0, which a log axis cannot show.
        shown = [error if error > 0 else math.nan for error in errors]
        line = axes.plot(n_values, shown, marker="." if len(n_values) == 1 else None, label=f"order {order}")[0]
        leading_neglected = [abs(float(stirling[order + 1])) * n ** -(order + 1) for n in n_values]
        axes.plot(n_values, leading_neglected, linestyle=":", color=line.get_color(), linewidth=1.0)
    resolution = [2.0**-52 * max(math.lgamma(n + 1.0), 1.0) for n in n_values]
    axes.plot(
        n_values, resolution, linestyle="--", color="grey", linewidth=1.0, label=r"float64 resolution, $2^{-52}\ln N!$"
    )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("N")
    axes.set_ylabel("|estimate / N! - 1|")
    axes.set_title(
        r"Laplace's method for $N!$: order $k$ falls as $N^{-(k+1)}$ (dotted: $|c_{k+1}|\,N^{-(k+1)}$)", fontsize=9
    )
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    return figure


# --------------------------------------------------------------------------------------------
# vaelab laplace integral
# --------------------------------------------------------------------------------------------


def _run_integral(args: argparse.Namespace) -> int:
    from vaelab import laplace

    orders = _orders(args.order)
    f = integrand_from_text(args.f)
    results = [
        laplace.laplace_integral(f, args.M, lower=args.a, upper=args.b, x0=args.x0, init=args.init, order=order)
        for order in orders
    ]
    first = results[0]
    print(f"∫ exp(M f(x)) dx over [{args.a:g}, {args.b:g}], f(x) = {args.f}, M = {args.M:g}")
    # + 0.0 turns the -0.0 that f = -x**2/2 gives at 0 into 0.
    print(
        f"maximum ({first.kind.replace('_', '-')}): x0 = {first.x0 + 0.0:.16g}, f(x0) = {first.f0 + 0.0:.16g}, "
        f"f'(x0) = {first.f1 + 0.0:.3g}, f''(x0) = {first.f2 + 0.0:.16g}"
    )
    reference = None
    if not args.no_quadrature:
        width = 1.0 / (args.M * abs(first.f1)) if first.kind == "endpoint" else 1.0 / math.sqrt(args.M * -first.f2)
        reference = laplace.quadrature_log_integral(f, args.M, args.a, args.b, peak=first.x0, width=width)
        print(f"quadrature: log I = {reference:.16g}")
    header = ["order k", "log I (Laplace)", "I (Laplace)", "c_k"] + (
        ["rel. error vs quadrature"] if reference is not None else []
    )
    rows = []
    for order, result in zip(orders, results):
        row = [str(order), f"{result.log_value:.16g}", f"{result.value:.10g}", f"{float(result.coefficients[-1]):.10g}"]
        if reference is not None:
            row.append(f"{math.expm1(result.log_value - reference):.3e}")
        rows.append(row)
    print(markdown_table(header, rows))
    return 0


def integrand_from_text(text: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """f from `module:function`, or from a Python expression in x evaluated with torch functions
    (cos, exp, log, ...)."""
    import torch

    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", text):
        module_name, function_name = text.split(":")
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise VaelabError(
                f"cannot load {text} ({error}); give an importable module:function or an expression in x"
            ) from None
        if not callable(function):
            raise VaelabError(f"{text} is not callable; give a function of a float64 tensor x")
        return function
    try:
        code = compile(text, "<f(x)>", "eval")
    except SyntaxError as error:
        raise VaelabError(
            f'f = {text!r} is not a Python expression ({error.msg}); write it in x, e.g. "cos(x)" or "log(x) - x"'
        ) from None
    names: dict[str, Any] = {name: getattr(torch, name) for name in EXPRESSION_FUNCTIONS}
    names.update(softplus=torch.nn.functional.softplus, torch=torch, pi=math.pi, e=math.e, inf=math.inf)
    unknown = set(code.co_names) - set(names) - {"x"}
    if unknown:
        raise VaelabError(f"f = {text!r} uses unknown name(s) {sorted(unknown)}; use x and {', '.join(sorted(names))}")

    def f(x: torch.Tensor) -> torch.Tensor:
        return eval(code, {"__builtins__": {}, **names}, {"x": x})  # noqa: S307 - the user's own expression

    return f


# --------------------------------------------------------------------------------------------
# shared formatting and parsing
# --------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A right-aligned Markdown table, ready to paste into docs."""
    lines = [header, ["---:"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _real(text: str) -> float:
    """A real number from the command line: 2.5, 1e3, -pi, 2*pi, inf."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = eval(
            compile(text, "<number>", "eval"),
            {"__builtins__": {}},
            {"pi": math.pi, "e": math.e, "inf": math.inf, "tau": math.tau},
        )  # noqa: S307
        return float(value)
    except Exception:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number (numbers, pi, e, inf and arithmetic are accepted)"
        ) from None


def _orders(orders: Sequence[int]) -> list[int]:
    if any(order < 0 for order in orders):
        raise VaelabError(f"--order values must be >= 0 (got {list(orders)})")
    return list(orders)


def _check_writable(path: Path) -> None:
    if not path.parent.exists():
        raise VaelabError(f"directory {path.parent} does not exist; create it or choose another --plot path")
    if path.suffix.lower() not in {".png", ".pdf", ".svg"}:
        raise VaelabError(f"--plot must name a .png, .pdf or .svg file (got {path})")
