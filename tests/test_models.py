"""The VAE's shapes, the reparameterization trick, and the template's sizes."""

import torch

from vaelab.config import ModelConfig
from vaelab.models import VAE, parameter_count, reconstruct_means, sample_means


def test_template_sizes_and_parameter_count():
    model = VAE()
    # 784-400-(20+20) encoder and 20-400-784 decoder, as the PyTorch VAE example
    expected = (784 * 400 + 400) + (400 * 40 + 40) + (20 * 400 + 400) + (400 * 784 + 784)
    assert parameter_count(model) == expected


def test_shapes_follow_the_config():
    model = VAE(ModelConfig(input_dim=30, hidden=7, latent_dim=3))
    x = torch.rand(5, 30)
    logits, mu, logvar = model(x, torch.randn(5, 3))
    assert logits.shape == (5, 30) and mu.shape == logvar.shape == (5, 3)
    assert sample_means(model, 4).shape == (4, 30)
    assert ((reconstruct_means(model, x) >= 0) & (reconstruct_means(model, x) <= 1)).all()


def test_reparameterize_has_the_posterior_moments_and_passes_gradients():
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, 2 * torch.log(torch.tensor(3.0)).item()], requires_grad=True)
    eps = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    z = VAE.reparameterize(mu, logvar, eps)
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 3.0]), atol=0.03, rtol=0)
    z.sum().backward()
    assert torch.all(mu.grad != 0) and torch.all(logvar.grad != 0)


def test_forward_is_deterministic_given_the_noise():
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_dim=12, hidden=6, latent_dim=2))
    x, eps = torch.rand(3, 12), torch.randn(3, 2)
    first, second = model(x, eps), model(x, eps)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
