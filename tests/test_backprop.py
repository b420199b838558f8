"""The hand-written gradient against the trusted reference: autograd through VAE.forward and
batch_negative_elbo, in float64 where the two must agree to rounding."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelab import backprop
from vaelab.config import ModelConfig, TrainConfig
from vaelab.models import VAE
from vaelab.objectives import batch_negative_elbo
from vaelab.train import train


by_hand_step = backprop.negative_elbo_gradients


def reference(model, x, eps):
    """(reconstruction, KL, gradients) by autograd, the way the torchrun path computes them."""
    model.zero_grad(set_to_none=True)
    logits, mu, logvar = model(x, eps)
    reconstruction, kl = batch_negative_elbo(logits, x, mu, logvar)
    (reconstruction + kl).backward()
    return reconstruction.detach(), kl.detach(), [p.grad.clone() for p in backprop.parameters(model)]


def by_hand(model, x, eps, compute_dtype=None):
    weights = tuple(p.detach() for p in backprop.parameters(model))
    grads = tuple(torch.full_like(w, float("nan")) for w in weights)  # must be overwritten, not added to
    reconstruction, kl = backprop.negative_elbo_gradients(weights, x, eps, grads, compute_dtype)
    return reconstruction, kl, list(grads)


def problem(input_dim, hidden, latent_dim, batch, seed, dtype=torch.float64, binary=False):
    torch.manual_seed(seed)
    model = VAE(ModelConfig(input_dim=input_dim, hidden=hidden, latent_dim=latent_dim)).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, input_dim, generator=generator, dtype=dtype)
    x = (x > 0.5).to(dtype) if binary else x
    eps = torch.randn(batch, latent_dim, generator=generator, dtype=dtype)
    return model, x, eps


@settings(max_examples=25, deadline=None)
@given(
    input_dim=st.integers(1, 40), hidden=st.integers(1, 30), latent_dim=st.integers(1, 6),
    batch=st.integers(1, 9), seed=st.integers(0, 2**16), binary=st.booleans(),
)
def test_the_gradient_by_hand_is_autograd_s_in_float64(input_dim, hidden, latent_dim, batch, seed, binary):
    model, x, eps = problem(input_dim, hidden, latent_dim, batch, seed, binary=binary)
    expected_rec, expected_kl, expected = reference(model, x, eps)
    reconstruction, kl, grads = by_hand(model, x, eps)
    torch.testing.assert_close(reconstruction, expected_rec, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, expected_kl, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(["W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4"], grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


def test_the_sheet_s_model_in_float32_matches_autograd_to_rounding():
    model, x, eps = problem(784, 400, 20, 128, seed=3, dtype=torch.float32)
    expected_rec, expected_kl, expected = reference(model, x, eps)
    reconstruction, kl, grads = by_hand(model, x, eps)
    assert torch.equal(reconstruction, expected_rec) and torch.equal(kl, expected_kl)  # the same loss code
    for got, want in zip(grads, expected):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_dead_relu_units_get_no_gradient_as_in_autograd():
    model, x, eps = problem(10, 8, 2, 5, seed=0)
    with torch.no_grad():  # units 0-3 of each hidden layer never fire
        model.fc1.bias[:4] = -1e3
        model.fc3.bias[:4] = -1e3
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
        logits, mu, logvar = model(x, eps)
    sum(batch_negative_elbo(logits.float(), x, mu.float(), logvar.float())).backward()
    assert all(g.dtype == torch.float32 for g in grads16)
    assert abs(rec16 - rec32) < 1e-4 * rec32 and abs(kl16 - kl32) < 1e-2 * kl32
    for got, want, autocast in zip(grads16, grads32, (p.grad for p in backprop.parameters(model))):
        error, autocast_error = (got - want).norm() / want.norm(), (autocast - want).norm() / want.norm()
        assert error < 1.5 * autocast_error + 1e-3 and error < 0.05  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("autograd_option", ["autograd", "detect_anomaly"])
def test_training_by_hand_follows_the_autograd_path(precision, autograd_option, monkeypatch):
    """Two epochs through `train`, by hand and by autograd (--autograd, or --detect-anomaly which
    needs autograd's graph): the same batches and noise, so the weights differ only by rounding."""
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = torch.rand(96, 16, generator=generator), torch.rand(16, 16, generator=generator)
    settings_ = dict(model=ModelConfig(input_dim=16, hidden=12, latent_dim=2), epochs=2, batch_size=16, precision=precision)
    calls = []
    monkeypatch.setattr(backprop, "negative_elbo_gradients", lambda *args: calls.append(1) or by_hand_step(*args))
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
