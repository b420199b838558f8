"""Every estimator with every likelihood and network, against an independent reference: with a one-dimensional
latent, log p(x) = log ∫ p(x|z) p(z) dz is computed by quadrature on a fine grid, and the Laplace evidence by
its own formula with the curvature from finite differences of that same integrand."""

import math

import pytest
import torch

from vaelab.config import ModelSpec
from vaelab.distributions import bits_per_dim
from vaelab.evaluation import (
    active_units,
    importance_weighted_evaluation,
    laplace_evidence,
    laplace_importance_sampling,
)
from vaelab.models import build_model

pytestmark = pytest.mark.usefixtures("float64_default")

CASES = {
    "conv-bernoulli": dict(network="conv", image_shape=(1, 6, 6), likelihood="bernoulli"),
    "resnet-logistic": dict(network="resnet", image_shape=(1, 6, 5), likelihood="logistic"),
    "mlp-logistic": dict(network="mlp", image_shape=(1, 4, 4), likelihood="logistic", hidden=8),
    "conv-mixture-colour": dict(
        network="conv", image_shape=(3, 4, 4), likelihood="logistic-mixture", mixture_components=2
    ),
}
GRID = torch.linspace(-9.0, 9.0, 6001, dtype=torch.float64)


def one_latent_model(case, seed=0):
    """The case's model with a 1-D latent and N(0, 1) prior; q(z|x) made broad (variance 2 around a point near 0)
    so that importance sampling with many samples reaches log p(x), whatever the random encoder says."""
    torch.manual_seed(seed)
    # tanh: a smooth integrand, whose mode and curvature the finite differences below can check
    spec = ModelSpec(latent_dims=(1,), channels=2, activation="tanh", **CASES[case])
    model = build_model(spec).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "residual" in name or name.endswith("conv2.weight"):  # give the residual branches a value
                parameter.add_(0.05 * torch.randn_like(parameter))
        head = model.encoder.net.head
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, math.log(2.0)]))
    return model


def images(model, n=3, seed=1):
    """8-bit images (levels v / 255) for the logistic likelihoods, binary ones for the Bernoulli."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (n, model.spec.input_dim), generator=generator).double() / 255
    return levels.round() if model.likelihood.kind == "bernoulli" else levels


def quadrature_log_evidence(model, x):
    """log ∫ p(x|z) p(z) dz on GRID by the trapezoid rule in log space: (B,)."""
    with torch.no_grad():
        z = GRID.reshape(-1, 1, 1).expand(-1, x.shape[0], 1)  # (G, B, 1)
        log_joint = model.log_joint(x, z)  # (G, B)
    step = float(GRID[1] - GRID[0])
    weights = torch.full((GRID.numel(), 1), math.log(step), dtype=torch.float64)
    weights[0] = weights[-1] = math.log(step / 2)
    return torch.logsumexp(log_joint + weights, dim=0)


@pytest.mark.parametrize("case", CASES)
def test_importance_weighted_bounds_reach_the_quadrature_evidence(case):
    model = one_latent_model(case)
    x = images(model)
    exact = quadrature_log_evidence(model, x).mean().item()
    result = importance_weighted_evaluation(model, x, [100, 20_000], seed=0, progress=False)
    assert result.bounds[100].mean <= exact + 0.02  # a lower bound, up to its Monte Carlo error
    assert abs(result.bounds[20_000].mean - exact) < 0.02


@pytest.mark.parametrize("case", CASES)
def test_laplace_evidence_is_its_formula_and_laplace_is_reaches_the_quadrature(case):
    model = one_latent_model(case)
    x = images(model)
    evidence = laplace_evidence(model, x, progress=False)
    exact = quadrature_log_evidence(model, x)
    for b in range(x.shape[0]):
        z_star = evidence.z_star[b].item()
        h = 1e-3
        points = torch.tensor([z_star - h, z_star, z_star + h], dtype=torch.float64).reshape(3, 1, 1)
        with torch.no_grad():
            values = model.log_joint(x[b : b + 1], points)[:, 0]
        curvature = -(values[0] - 2 * values[1] + values[2]).item() / h**2  # -d²/dz² log p(x, z) at z*
        assert abs(values[2] - values[0]).item() / (2 * h) < 1e-3 * max(1.0, curvature)  # a stationary point
        formula = values[1].item() + 0.5 * math.log(2 * math.pi) - 0.5 * math.log(curvature)
        assert evidence.log_evidence[b].item() == pytest.approx(formula, abs=1e-4)
    laplace_is = laplace_importance_sampling(
        model, x, 5000, seed=0, z_star=evidence.z_star, neg_hessian=evidence.neg_hessian
    )
    assert -0.1 < laplace_is.mean - exact.mean().item() < 0.02  # a lower bound in expectation, close


@pytest.mark.parametrize("case", CASES)
def test_active_units_and_bits_per_dim(case):
    model = one_latent_model(case)
    with torch.no_grad():  # a unit whose posterior mean varies with x: the encoder's mean row made to read x
        model.encoder.net.head.weight[0].normal_(0.0, 1.0)
    x = images(model, n=50)
    count, variances = active_units(model, x, threshold=0.01)
    with torch.no_grad():
        means = model.posterior(x).mean  # (N, 1)
    torch.testing.assert_close(variances.double(), means.var(dim=0, correction=1).double(), rtol=1e-6, atol=1e-9)
    assert count == int((means.var(dim=0, correction=1) > 0.01).sum())
    nats = -quadrature_log_evidence(model, x[:2]).mean().item()
    assert bits_per_dim(nats, model.spec.input_dim) == pytest.approx(nats / (model.spec.input_dim * math.log(2)))
