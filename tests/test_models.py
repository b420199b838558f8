"""The model family's shapes and building blocks, and the PyTorch example's sizes and initialisation."""

import pytest
import torch

from vaelab.config import ModelSpec
from vaelab.models import VAE, TwoLayerVAE, build_model, parameter_count, reconstruct_means, sample_means
from vaelab.models.base import DiagonalGaussian
from vaelab.nn import denormals_flushed


def test_the_default_is_the_pytorch_example_s_sizes_and_parameter_count():
    model = build_model(ModelSpec())
    assert isinstance(model, VAE)
    # 784-400-(20+20) encoder and 20-400-784 decoder, as the PyTorch VAE example
    expected = (784 * 400 + 400) + (400 * 40 + 40) + (20 * 400 + 400) + (400 * 784 + 784)
    assert parameter_count(model) == expected


def test_initialisation_draws_the_example_s_layers_in_its_order():
    """Under one seed, the layers get the weights nn.Linear layers created in the example's order
    (fc1, fc2 = fc21 + fc22, fc3, fc4) would get: so `--seed 1` trains the same model as vaelab 0.1."""
    torch.manual_seed(1)
    reference = [
        torch.nn.Linear(784, 400),
        torch.nn.Linear(400, 40),
        torch.nn.Linear(20, 400),
        torch.nn.Linear(400, 784),
    ]
    torch.manual_seed(1)
    model = build_model(ModelSpec())
    layers = [
        model.encoder.net.trunk[0],
        model.encoder.net.head,
        model.likelihood.decoder.trunk[0],
        model.likelihood.decoder.head,
    ]
    for ours, theirs in zip(layers, reference):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


def test_shapes_follow_the_spec_for_every_model():
    for spec in (
        ModelSpec(input_dim=30, hidden=7, latent_dims=3),
        ModelSpec(input_dim=30, hidden=(7, 5), latent_dims=(4, 2), depth=2, activation="tanh"),
        ModelSpec(input_dim=30, hidden=7, latent_dims=3, prior="vamp", pseudo_inputs=4),
    ):
        model = build_model(spec)
        x = torch.rand(5, 30)
        posterior = model.posterior(x)
        z = posterior.rsample(torch.randn(6, 5, spec.latent_dim))
        assert z.shape == (6, 5, spec.latent_dim) and posterior.log_prob(z).shape == (6, 5)
        assert model.log_joint(x, z).shape == (6, 5) and model.logits(z).shape == (6, 5, 30)
        assert sample_means(model, 4).shape == (4, 30)
        means = reconstruct_means(model, x)
        assert means.shape == (5, 30) and ((means >= 0) & (means <= 1)).all()
    assert isinstance(build_model(ModelSpec(latent_dims=(4, 2))), TwoLayerVAE)


def test_reparameterize_has_the_posterior_moments_and_passes_gradients():
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, 2 * torch.log(torch.tensor(3.0)).item()], requires_grad=True)
    eps = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    z = DiagonalGaussian(mu, logvar).rsample(eps)
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 3.0]), atol=0.03, rtol=0)
    z.sum().backward()
    assert torch.all(mu.grad != 0) and torch.all(logvar.grad != 0)


def test_prior_samples_follow_the_prior_s_density():
    """Draws of p(z) (VampPrior mixture and the two-layer chain): their mean log p(z) is the
    density's negative entropy, so it matches the log-density of fresh draws in distribution."""
    torch.manual_seed(0)
    for spec in (
        ModelSpec(input_dim=12, hidden=6, latent_dims=2, prior="vamp", pseudo_inputs=5),
        ModelSpec(input_dim=12, hidden=6, latent_dims=(3, 2)),
    ):
        model = build_model(spec).double()
        with torch.no_grad():
            z = model.sample_latent(100_000, torch.Generator().manual_seed(1)).double()
            log_density = model.log_prior(z)
            # Moments of the first coordinate, against importance-free Monte Carlo from the same density:
            # E_p[∂/∂z log p(z)] = 0 for a density vanishing at infinity (the score's mean).
            z.requires_grad_(True)
        with torch.enable_grad():
            score = torch.autograd.grad(model.log_prior(z).sum(), z)[0]
        assert torch.isfinite(log_density).all()
        assert (score.mean(0).abs() < 4 * score.std(0) / 100_000**0.5 + 1e-3).all()


def test_the_posterior_is_deterministic_given_the_noise():
    torch.manual_seed(0)
    model = build_model(ModelSpec(input_dim=12, hidden=6, latent_dims=(3, 2)))
    x, eps = torch.rand(3, 12), torch.randn(3, 5)
    assert torch.equal(model.posterior(x).rsample(eps), model.posterior(x).rsample(eps))


def test_denormals_are_flushed_inside_the_block_only():
    subnormal = torch.tensor([3e-39], dtype=torch.float32)  # below float32's smallest normal, 1.18e-38
    assert (subnormal * 0.5).item() > 0
    with denormals_flushed(False) as active:
        assert not active and (subnormal * 0.5).item() > 0
    with denormals_flushed() as active:
        if not active:
            pytest.skip("this CPU cannot flush subnormal floats")
        assert (subnormal * 0.5).item() == 0.0
        assert (torch.tensor([1e-30]) * 0.5).item() == pytest.approx(5e-31)  # normal numbers untouched
    assert (subnormal * 0.5).item() > 0  # switched off again on exit
