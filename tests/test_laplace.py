"""Laplace's method against trusted references: math.lgamma, Stirling's exact series, Bessel I0, quadrature."""

import argparse
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from vaelab import laplace
from vaelab.cli import laplace as laplace_cli
from vaelab.errors import VaelabError

scipy_special = pytest.importorskip("scipy.special")

STIRLING = [
    Fraction(1),
    Fraction(1, 12),
    Fraction(1, 288),
    Fraction(-139, 51840),
    Fraction(-571, 2488320),
    Fraction(163879, 209018880),
    Fraction(5246819, 75246796800),
    Fraction(-534703531, 902961561600),
]


def log_factorial_error(n: float, order: int) -> float:
    return laplace.factorial_relative_error(n, laplace.laplace_factorial(n, order))


def fitted_slope(xs, ys) -> float:
    """Slope of log|y| against log x by least squares."""
    return float(np.polyfit(np.log(xs), np.log(np.abs(ys)), 1)[0])


# --------------------------------------------------------------------------------------------
# the factorial
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "expected"), [(1, "-7.786e-02"), (10, "-8.296e-03"), (100, "-8.330e-04")])
def test_order_zero_reproduces_stirlings_known_errors(n, expected):
    assert f"{log_factorial_error(n, 0):.3e}" == expected


def test_order_zero_is_sqrt_2_pi_n_times_n_over_e_to_the_n():
    for n in (1.0, 7.0, 123.0):
        assert laplace.laplace_factorial(n, 0) == pytest.approx(
            0.5 * math.log(2 * math.pi * n) + n * math.log(n) - n, rel=1e-15, abs=1e-15
        )


def test_factorial_coefficients_are_stirlings_series_exactly():
    assert laplace.factorial_series_coefficients(len(STIRLING) - 1) == STIRLING


def test_float_paths_give_stirlings_series_to_1e_12():
    order = len(STIRLING) - 1
    float_derivatives = [
        (-1.0) ** (j - 1) * math.factorial(j - 1) if j >= 2 else [-1.0, 0.0][j] for j in range(2 * order + 3)
    ]
    taylor_mode = laplace.taylor_derivatives(lambda x: torch.log(x) - x, 1.0, 2 * order + 2)
    for derivatives in (float_derivatives, taylor_mode):
        coefficients = laplace.series_coefficients(derivatives, order)
        assert all(isinstance(c, float) for c in coefficients)
        for c, exact in zip(coefficients, STIRLING):
            assert c == pytest.approx(float(exact), rel=1e-12)


def test_leading_coefficient_is_the_sheets_formula():
    """c1 = f''''/(8a²) + 5 f'''²/(24a³) for arbitrary (rational) derivatives."""
    a, f3, f4 = Fraction(3, 2), Fraction(-5, 7), Fraction(11, 3)
    c1 = laplace.series_coefficients([0, 0, -a, f3, f4], 1)[1]
    assert c1 == f4 / (8 * a**2) + 5 * f3**2 / (24 * a**3)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_relative_error_falls_as_n_to_the_minus_order_plus_one(order):
    # N from 32: below it c_{k+2}/(c_{k+1} N) still bends order 3's line; to 128: above it order 3's
    # error (~1e-12) nears float64's resolution of ln N!.
    ns = [32.0, 64.0, 128.0]
    errors = [log_factorial_error(n, order) for n in ns]
    assert fitted_slope(ns, errors) == pytest.approx(-(order + 1), abs=0.1)
    # The first dropped term sets the error: estimate/N! - 1 ≈ -c_{k+1} / N^{k+1}.
    assert errors[0] == pytest.approx(-float(STIRLING[order + 1]) / ns[0] ** (order + 1), rel=0.15)


@pytest.mark.parametrize("order", [6, 8, 12])
def test_high_orders_reach_1e_12_at_n_20(order):
    assert abs(log_factorial_error(20, order)) < 1e-12


def test_large_and_non_integer_n():
    # ln(10^8 !) ≈ 1.7e9, whose float64 spacing is 2.4e-7: the estimate must agree to a few spacings.
    assert laplace.laplace_factorial(1e8, 1) == pytest.approx(math.lgamma(1e8 + 1), abs=1e-6)
    assert abs(log_factorial_error(10.5, 3)) < 3 * abs(float(STIRLING[4])) / 10.5**4
    assert abs(log_factorial_error(10.5, 8)) < 1e-10


@pytest.mark.parametrize("n", [-1.0, 0.0, math.nan, math.inf])
def test_refuses_n_that_is_not_positive_and_finite(n):
    with pytest.raises(VaelabError, match="N must be positive"):
        laplace.laplace_factorial(n, 1)


# --------------------------------------------------------------------------------------------
# a second integrand: ∫_{-π}^{π} e^{M cos x} dx = 2π I0(M)
# --------------------------------------------------------------------------------------------


def bessel_coefficient(k: int) -> Fraction:
    """The k-th term of 2π I0(M) ~ sqrt(2π/M) e^M Σ_k ((2k-1)!!)² / (k! 8^k M^k)."""
    double_factorial = math.prod(range(2 * k - 1, 0, -2))
    return Fraction(double_factorial**2, math.factorial(k) * 8**k)


def test_cosine_coefficients_exact_and_by_taylor_mode():
    order = 6
    cos_derivatives = [(1, 0, -1, 0)[j % 4] for j in range(2 * order + 3)]
    assert laplace.series_coefficients(cos_derivatives, order) == [bessel_coefficient(k) for k in range(order + 1)]
    assert bessel_coefficient(1) == Fraction(1, 8) and bessel_coefficient(2) == Fraction(9, 128)
    result = laplace.laplace_integral(torch.cos, 30.0, lower=-math.pi, upper=math.pi, order=order)
    assert result.x0 == pytest.approx(0.0, abs=1e-12) and result.f2 == pytest.approx(-1.0, rel=1e-14)
    for c, exact in zip(result.coefficients, [bessel_coefficient(k) for k in range(order + 1)]):
        assert c == pytest.approx(float(exact), rel=1e-13)


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_cosine_integral_matches_bessel_i0(order):
    M = 30.0
    exact = math.log(2 * math.pi) + math.log(scipy_special.ive(0, M)) + M  # ive(0, M) = I0(M) e^{-M}
    result = laplace.laplace_integral(torch.cos, M, lower=-math.pi, upper=math.pi, order=order)
    error = math.expm1(result.log_value - exact)
    assert error == pytest.approx(-float(bessel_coefficient(order + 1)) / M ** (order + 1), rel=0.25)


# --------------------------------------------------------------------------------------------
# boundary maxima, checked against quadrature
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["lower", "upper"])
def test_half_gaussian_at_an_end(end):
    # f = -y²/2 - y³/3 walking into the interval, f'(end) = 0; the first correction to the
    # half-Gaussian is 4 g3 / (a^{3/2} sqrt(2π M)) with g3 = f'''/6 = -1/3 (docs/laplace.md §5).
    sign = 1.0 if end == "lower" else -1.0
    f = lambda x: -(x**2) / 2 - (sign * x) ** 3 / 3  # noqa: E731
    lower, upper = (0.0, math.inf) if end == "lower" else (-math.inf, 0.0)
    predicted = -4.0 / (3.0 * math.sqrt(2 * math.pi))
    for M in (1e4, 1e6):
        result = laplace.laplace_integral(f, M, lower=lower, upper=upper)
        assert result.kind == "half_gaussian" and result.x0 == 0.0
        exact = laplace.quadrature_log_integral(f, M, lower, upper, peak=0.0)
        assert math.expm1(exact - result.log_value) * math.sqrt(M) == pytest.approx(predicted, abs=2.0 / math.sqrt(M))


def test_endpoint_with_nonzero_slope():
    # f = -y - y²/2 on [0, 3]: e^{M f0}/(M |f'|), first correction f''/(M f'²) = -1/M.
    f = lambda x: -x - x**2 / 2  # noqa: E731
    for M in (1e3, 1e4):
        result = laplace.laplace_integral(f, M, lower=0.0, upper=3.0)
        assert result.kind == "endpoint" and result.x0 == 0.0 and result.f1 == -1.0
        exact = laplace.quadrature_log_integral(f, M, 0.0, 3.0, peak=0.0, width=1.0 / M)
        assert math.expm1(exact - result.log_value) * M == pytest.approx(-1.0, abs=5.0 / M)
    # f = x on [-1, 0]: exactly (1 - e^{-M}) / M, which the endpoint form gives up to e^{-M}.
    result = laplace.laplace_integral(lambda x: x, 50.0, lower=-1.0, upper=0.0)
    assert result.kind == "endpoint" and result.log_value == pytest.approx(
        math.log(-math.expm1(-50.0) / 50.0), abs=1e-20
    )


# --------------------------------------------------------------------------------------------
# d dimensions
# --------------------------------------------------------------------------------------------

PRECISION = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)  # non-diagonal -H
MEAN = torch.tensor([0.3, -0.5], dtype=torch.float64)


def test_gaussian_exponent_is_exact_in_2d():
    f = lambda x: 0.7 - 0.5 * (x - MEAN) @ PRECISION @ (x - MEAN)  # noqa: E731
    M = 10.0
    result = laplace.laplace_integral_nd(f, M, init=[0.0, 0.0])
    exact = M * 0.7 + math.log(2 * math.pi / M) - 0.5 * math.log(float(torch.linalg.det(PRECISION)))
    assert result.log_value == pytest.approx(exact, rel=1e-14)
    assert torch.allclose(result.x0, MEAN, atol=1e-12, rtol=0)
    assert torch.allclose(result.neg_hessian, PRECISION, atol=1e-12, rtol=0)


def grid_log_integral(exponent, M: float, half_width: float, points: int = 601) -> float:
    """log ∫∫ exp(M f) by the trapezoid rule on a square grid; spectrally accurate for a smooth, decayed integrand."""
    xs = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, xs, indexing="ij")
    spacing = float(xs[1] - xs[0])
    return math.log(float(torch.exp(M * exponent(X, Y)).sum()) * spacing**2)


def test_non_gaussian_2d_error_shrinks_like_one_over_m():
    def exponent(x0, x1):
        return (
            -0.5 * (PRECISION[0, 0] * x0**2 + 2 * PRECISION[0, 1] * x0 * x1 + PRECISION[1, 1] * x1**2)
            - (x0**4 + x1**4) / 12
            + 0.25 * x0 * x1**2
        )

    smallest_curvature = float(torch.linalg.eigvalsh(PRECISION)[0])
    Ms, errors = [10.0, 20.0, 40.0, 80.0], []
    for M in Ms:
        result = laplace.laplace_integral_nd(lambda x: exponent(x[0], x[1]), M, init=[0.4, -0.3])
        assert torch.allclose(result.x0, torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
        errors.append(
            math.expm1(result.log_value - grid_log_integral(exponent, M, 12.0 / math.sqrt(M * smallest_curvature)))
        )
    assert fitted_slope(Ms, errors) == pytest.approx(-1.0, abs=0.1)


def test_newton_falls_back_to_lbfgs_where_the_start_is_not_concave():
    f = lambda x: torch.exp(-0.5 * (x - MEAN) @ PRECISION @ (x - MEAN))  # noqa: E731  concave only near MEAN
    start = torch.tensor([3.0, -3.0], dtype=torch.float64)
    hessian_at_start = torch.autograd.functional.hessian(f, start)
    assert float(torch.linalg.eigvalsh(-hessian_at_start)[0]) < 0  # Newton alone cannot start here
    result = laplace.laplace_integral_nd(f, 10.0, init=start)
    assert torch.allclose(result.x0, MEAN, atol=1e-10, rtol=0)
    assert result.log_value == pytest.approx(
        10.0 + math.log(2 * math.pi / 10.0) - 0.5 * math.log(float(torch.linalg.det(PRECISION))), rel=1e-12
    )


def test_gaussian_log_evidence_is_batched_and_matches_logdet():
    generator = torch.Generator().manual_seed(0)
    factors = torch.randn(5, 3, 3, generator=generator, dtype=torch.float64)
    neg_hessians = factors @ factors.mT + 0.5 * torch.eye(3, dtype=torch.float64)  # (5, 3, 3) positive definite
    log_peaks = torch.randn(5, generator=generator, dtype=torch.float64)
    evidence = laplace.gaussian_log_evidence(log_peaks, neg_hessians)
    assert evidence.shape == (5,) and evidence.dtype == torch.float64
    expected = log_peaks + 1.5 * math.log(2 * math.pi) - 0.5 * torch.logdet(neg_hessians)
    assert torch.allclose(evidence, expected, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(f=lambda x: x, M=1.0), "no maximum"),
        (dict(f=lambda x: -x, M=1.0, lower=0.0, upper=1.0, allow_boundary=False), "no interior maximum"),
        (dict(f=lambda x: x**2, M=1.0, x0=0.0), r"f''\(x0\) = 2 >= 0"),
        (dict(f=lambda x: -(x**4), M=1.0, x0=0.0), r"f''\(x0\) = 0 >= 0"),
        (dict(f=torch.log, M=1.0, lower=-1.0, upper=1.0), "must be finite"),
        (dict(f=torch.cos, M=math.nan), "M must be positive and finite"),
        (dict(f=None, M=1.0, x0=0.0, derivatives=[0.0, 0.0, math.nan]), "not finite"),
        (dict(f=lambda x: -((x - 1) ** 2), M=1.0, x0=0.5), "not a stationary point"),
        (dict(f=lambda x: x**2, M=1.0, lower=-1.0, upper=1.0), "two comparable maxima"),
        (dict(f=lambda x: -(x**2) / 2 - x**3, M=10.0, lower=0.0, upper=1.0, order=1), "only order 0"),
    ],
    ids=[
        "unbounded",
        "boundary-refused",
        "minimum",
        "degenerate",
        "nan",
        "bad-M",
        "bad-derivatives",
        "not-stationary",
        "two-peaks",
        "order-at-end",
    ],
)
def test_refusals_name_the_problem(kwargs, message):
    with pytest.raises(VaelabError, match=message):
        laplace.laplace_integral(**kwargs)


def test_refusals_in_d_dimensions():
    with pytest.raises(VaelabError, match="not positive definite"):
        laplace.laplace_integral_nd(lambda x: x[0] ** 2 - x[1] ** 2, 1.0, x0=[0.0, 0.0])
    neg_hessians = torch.stack([PRECISION, -PRECISION, PRECISION])
    with pytest.raises(VaelabError, match=r"batch item\(s\) \[1\]"):
        laplace.gaussian_log_evidence(torch.zeros(3), neg_hessians)


def test_taylor_mode_agrees_with_autograd_and_autograd_is_capped():
    def composite(x):
        return torch.exp(-(x**2)) * torch.cos(3 * x) + torch.lgamma(x + 2) + torch.sqrt(1 + x**2) / torch.tanh(x)

    taylor = laplace.taylor_derivatives(composite, 0.7, 6)
    nested = laplace._autograd_derivatives(composite, 0.7, 6)
    assert taylor == pytest.approx(nested, rel=1e-12)
    branchy = lambda x: torch.where(x > 0, -(x**2), -2 * x**2)  # noqa: E731  comparisons leave Taylor mode
    assert laplace.taylor_derivatives(branchy, 0.5, 4) == pytest.approx((-0.25, -1.0, -2.0, 0.0, 0.0))
    with pytest.raises(VaelabError, match="at most 8"):
        laplace.taylor_derivatives(branchy, 0.5, 10)


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vaelab")
    laplace_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_factorial_table_and_plot(tmp_path, capsys):
    plot = tmp_path / "errors.png"
    assert run_cli(["laplace", "factorial", "--n", "1", "10", "100", "--order", "0", "1", "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in lines
        if line.startswith("| ") and "---" not in line
    }
    assert rows["10"][0] == f"{math.lgamma(11.0):.16g}"
    assert [rows[n][2] for n in ("1", "10", "100")] == ["-7.786e-02", "-8.296e-03", "-8.330e-04"]
    assert float(rows["10"][3]) == pytest.approx(laplace.laplace_factorial(10.0, 1), rel=1e-15)
    assert rows["100"][4] == f"{log_factorial_error(100.0, 1):.3e}"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("integrand", ["cos(x)", "torch:cos"])
def test_cli_integral_beside_quadrature(integrand, capsys):
    assert run_cli(["laplace", "integral", integrand, "--M", "20", "--a=-pi", "--b", "pi", "--order", "0", "2"]) == 0
    output = capsys.readouterr().out
    exact = math.log(2 * math.pi) + math.log(scipy_special.ive(0, 20.0)) + 20.0
    quadrature_line = next(line for line in output.splitlines() if line.startswith("quadrature"))
    assert float(quadrature_line.split("=")[-1]) == pytest.approx(exact, rel=1e-13)
    order_two = next(line for line in output.splitlines() if line.startswith("| 2 |"))
    relative_error = float(order_two.split("|")[-2])
    assert relative_error == pytest.approx(-float(bessel_coefficient(3)) / 20.0**3, rel=0.3)


def test_cli_rejects_an_unknown_name():
    with pytest.raises(VaelabError, match="unknown name"):
        run_cli(["laplace", "integral", "cosine(x)"])
