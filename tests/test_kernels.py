"""Kernels against the trusted reference (autograd, and the model's own log-densities), in float64
where they must agree to rounding; and a model outside a kernel's support never takes it."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelab import kernels
from vaelab.config import ModelSpec, ObjectiveSpec, TrainConfig
from vaelab.kernels import Runtime, bernoulli_decoder, mlp_elbo, training_kernel
from vaelab.models import VAE, build_model
from vaelab.objectives import elbo
from vaelab.training import train

by_hand_step = mlp_elbo.negative_elbo_gradients


def reference(model, x, eps, kl_weight=1.0):
    """(reconstruction, KL, gradients) by autograd through the model and `objectives.elbo`, the torchrun path."""
    model.zero_grad(set_to_none=True)
    terms = elbo(model, x, eps.unsqueeze(0), kl_weight)
    terms.surrogate.backward()
    return (
        terms.reconstruction.sum().detach(),
        terms.kl.sum().detach(),
        [p.grad.clone() for p in mlp_elbo.parameters(model)],
    )


def by_hand(model, x, eps, compute_dtype=None, kl_weight=1.0):
    weights = tuple(p.detach() for p in mlp_elbo.parameters(model))
    grads = tuple(torch.full_like(w, float("nan")) for w in weights)  # must be overwritten, not added to
    reconstruction, kl = mlp_elbo.negative_elbo_gradients(weights, x, eps, grads, compute_dtype, kl_weight)
    return reconstruction, kl, list(grads)


def problem(input_dim, hidden, latent_dim, batch, seed, dtype=torch.float64, binary=False):
    torch.manual_seed(seed)
    model = VAE(ModelSpec(input_dim=input_dim, hidden=hidden, latent_dims=latent_dim)).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, input_dim, generator=generator, dtype=dtype)
    x = (x > 0.5).to(dtype) if binary else x
    eps = torch.randn(batch, latent_dim, generator=generator, dtype=dtype)
    return model, x, eps


@settings(max_examples=25, deadline=None)
@given(
    input_dim=st.integers(1, 40),
    hidden=st.integers(1, 30),
    latent_dim=st.integers(1, 6),
    batch=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    binary=st.booleans(),
    kl_weight=st.sampled_from([1.0, 0.0, 0.37, 4.0]),
)
def test_the_gradient_by_hand_is_autograd_s_in_float64(input_dim, hidden, latent_dim, batch, seed, binary, kl_weight):
    model, x, eps = problem(input_dim, hidden, latent_dim, batch, seed, binary=binary)
    expected_rec, expected_kl, expected = reference(model, x, eps, kl_weight)
    reconstruction, kl, grads = by_hand(model, x, eps, kl_weight=kl_weight)
    torch.testing.assert_close(reconstruction, expected_rec, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, expected_kl, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(["W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4"], grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


def test_the_sheet_s_model_in_float32_matches_autograd_to_rounding():
    model, x, eps = problem(784, 400, 20, 128, seed=3, dtype=torch.float32)
    expected_rec, expected_kl, expected = reference(model, x, eps)
    reconstruction, kl, grads = by_hand(model, x, eps)
    torch.testing.assert_close(reconstruction, expected_rec, rtol=1e-6, atol=0)  # fused sum vs per-image rows
    torch.testing.assert_close(kl, expected_kl, rtol=1e-6, atol=0)
    for got, want in zip(grads, expected):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_dead_relu_units_get_no_gradient_as_in_autograd():
    model, x, eps = problem(10, 8, 2, 5, seed=0)
    with torch.no_grad():  # units 0-3 of each hidden layer never fire
        model.encoder.net.trunk[0].bias[:4] = -1e3
        model.likelihood.decoder.trunk[0].bias[:4] = -1e3
    _, _, expected = reference(model, x, eps)
    _, _, grads = by_hand(model, x, eps)
    for index in (0, 4):  # W1 and W3: the rows of the dead units
        assert torch.equal(grads[index][:4], torch.zeros_like(grads[index][:4]))
        torch.testing.assert_close(grads[index], expected[index], rtol=1e-12, atol=1e-12)


def test_bf16_products_are_as_close_to_float32_as_autocast_s():
    model, x, eps = problem(784, 400, 20, 128, seed=4, dtype=torch.float32)
    rec32, kl32, grads32 = by_hand(model, x, eps)
    rec16, kl16, grads16 = by_hand(model, x, eps, torch.bfloat16)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = elbo(model, x, eps.unsqueeze(0))
    terms.surrogate.backward()
    assert all(g.dtype == torch.float32 for g in grads16)
    assert abs(rec16 - rec32) < 1e-4 * rec32 and abs(kl16 - kl32) < 1e-2 * kl32
    for got, want, autocast in zip(grads16, grads32, (p.grad for p in mlp_elbo.parameters(model))):
        error, autocast_error = (got - want).norm() / want.norm(), (autocast - want).norm() / want.norm()
        assert error < 1.5 * autocast_error + 1e-3 and error < 0.05  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("autograd_option", ["autograd", "detect_anomaly"])
def test_training_by_hand_follows_the_autograd_path(precision, autograd_option, monkeypatch):
    """Two epochs through `train`, by hand and by autograd (--autograd, or --detect-anomaly which
    needs autograd's graph): the same batches and noise, so the weights differ only by rounding."""
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = torch.rand(96, 16, generator=generator), torch.rand(16, 16, generator=generator)
    settings_ = dict(
        model=ModelSpec(input_dim=16, hidden=12, latent_dims=2), epochs=2, batch_size=16, precision=precision
    )
    calls = []
    monkeypatch.setattr(mlp_elbo, "negative_elbo_gradients", lambda *args: calls.append(1) or by_hand_step(*args))
    hand = train(TrainConfig(**settings_), train_x, test_x, progress=False)
    assert len(calls) == 2 * 6  # every step, by hand
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Anomaly Detection has been enabled")
        graph = train(TrainConfig(**settings_, **{autograd_option: True}), train_x, test_x, progress=False)
    assert len(calls) == 2 * 6  # none
    tolerance = 1e-5 if precision == "fp32" else 5e-2
    for row_hand, row_graph in zip(hand.history, graph.history, strict=True):
        assert row_hand["train_loss"] == pytest.approx(row_graph["train_loss"], rel=tolerance)
    for name, value in hand.model.state_dict().items():
        torch.testing.assert_close(value, graph.model.state_dict()[name], rtol=0, atol=tolerance * 10, msg=name)


# --- which runs a kernel serves -------------------------------------------------------------------

SERVED = ModelSpec(input_dim=16, hidden=12, latent_dims=2)
OUTSIDE = {
    "two layers": (ModelSpec(input_dim=16, hidden=12, latent_dims=(3, 2)), ObjectiveSpec(), Runtime()),
    "depth 2": (ModelSpec(input_dim=16, hidden=12, latent_dims=2, depth=2), ObjectiveSpec(), Runtime()),
    "tanh": (ModelSpec(input_dim=16, hidden=12, latent_dims=2, activation="tanh"), ObjectiveSpec(), Runtime()),
    "VampPrior": (
        ModelSpec(input_dim=16, hidden=12, latent_dims=2, prior="vamp", pseudo_inputs=3),
        ObjectiveSpec(),
        Runtime(),
    ),
    "gaussian": (ModelSpec(input_dim=16, hidden=12, latent_dims=2, likelihood="gaussian"), ObjectiveSpec(), Runtime()),
    "iwae": (SERVED, ObjectiveSpec(name="iwae", k=3), Runtime()),
    "dreg": (SERVED, ObjectiveSpec(name="dreg", k=3), Runtime()),
    "torchrun": (SERVED, ObjectiveSpec(), Runtime(world_size=2)),
    "--autograd": (SERVED, ObjectiveSpec(), Runtime(autograd=True)),
}


def test_the_kernel_serves_the_pytorch_example_s_model_with_the_elbo_and_beta():
    assert training_kernel(ModelSpec(), ObjectiveSpec(), Runtime()) is mlp_elbo
    assert (
        training_kernel(SERVED, ObjectiveSpec(name="beta", beta=0.5, warmup_epochs=2), Runtime(precision="bf16"))
        is mlp_elbo
    )


@pytest.mark.parametrize("case", sorted(OUTSIDE))
def test_a_run_outside_the_kernel_s_support_trains_through_autograd(case, monkeypatch):
    model, objective, runtime = OUTSIDE[case]
    assert training_kernel(model, objective, runtime) is None
    assert "autograd (" in kernels.training_path(model, objective, runtime)
    if runtime.world_size > 1:
        return  # tests/test_distributed.py trains under torchrun
    monkeypatch.setattr(mlp_elbo, "negative_elbo_gradients", lambda *args: pytest.fail("the kernel ran"))
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = (
        (torch.rand(32, 16, generator=generator) > 0.5).float(),
        (torch.rand(8, 16, generator=generator) > 0.5).float(),
    )
    config = TrainConfig(model=model, objective=objective, autograd=runtime.autograd, epochs=1, batch_size=16)
    result = train(config, train_x, test_x, progress=False)
    assert len(result.history) == 1


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(input_dim=30, hidden=9, latent_dims=3),
        ModelSpec(input_dim=30, hidden=9, latent_dims=3, depth=2, activation="tanh"),
        ModelSpec(input_dim=30, hidden=(9, 7), latent_dims=(4, 2)),
        ModelSpec(input_dim=30, hidden=9, latent_dims=3, depth=0),
    ],
)
def test_the_fused_decoder_is_the_model_s_log_likelihood(spec):
    torch.manual_seed(0)
    model = build_model(spec).double()
    assert kernels.evaluation_decoder(model) is bernoulli_decoder.FusedBernoulliDecoder
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 30, generator=generator) > 0.5).double()  # (b, P)
    z = torch.randn(4, 6, spec.latent_dim, generator=generator, dtype=torch.float64)  # (b, c, D)
    decoder = bernoulli_decoder.FusedBernoulliDecoder(model, 4 * 6, torch.device("cpu"), torch.float64)
    xw, xb = decoder.data_terms(x)
    with torch.no_grad():
        fused = decoder.log_likelihood(model.decoder_input(z), xw, xb)  # (b, c)
        expected = model.log_likelihood(x, z.transpose(0, 1)).T
    torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-10)


def test_the_fused_decoder_does_not_serve_a_gaussian_likelihood():
    model = build_model(ModelSpec(input_dim=8, hidden=4, latent_dims=2, likelihood="gaussian"))
    assert kernels.evaluation_decoder(model) is None
    assert "gaussian" in bernoulli_decoder.why_not(model)
