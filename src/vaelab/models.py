"""The sheet's VAE (Kingma & Welling 2013, appendix C.2): a Gaussian MLP encoder and a
Bernoulli MLP decoder. No loss lives here: `vaelab.objectives` owns the ELBO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import ModelConfig


class VAE(nn.Module):
    """q(z|x) = N(mu(x), diag exp(logvar(x))), p(z) = N(0, I), p(x|z) = Bernoulli(sigmoid(decode(z)))."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.fc1 = nn.Linear(config.input_dim, config.hidden)
        # mu and logvar come from one (hidden -> 2 * latent) layer: one matmul instead of the
        # template's two (fc21, fc22); same fan-in, so the same initial distribution.
        self.fc2 = nn.Linear(config.hidden, 2 * config.latent_dim)
        self.fc3 = nn.Linear(config.latent_dim, config.hidden)
        self.fc4 = nn.Linear(config.hidden, config.input_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, input_dim) in [0, 1] -> mu, logvar, each (B, latent_dim)."""
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc2(h).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I) given (paper eq. 10): the draw is an input,
        so the caller's generator decides the noise and the map stays differentiable."""
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., latent_dim) -> Bernoulli logits (..., input_dim); probabilities are sigmoid(logits)."""
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One reparameterized pass: x (B, input_dim), eps (B, latent_dim) -> logits, mu, logvar."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def sample_means(model: VAE, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws from p(x) = integral p(x|z) p(z) dz shown as decoder means: z ~ N(0, I) (n, D) -> sigmoid(decode(z)) (n, P)."""
    device = next(model.parameters()).device
    z = torch.randn(n, model.config.latent_dim, generator=generator, device=device)
    return torch.sigmoid(model.decode(z))


@torch.no_grad()
def reconstruct_means(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """x (n, P) -> sigmoid(decode(mu(x))) (n, P): the decoder mean at the posterior mean."""
    mu, _ = model.encode(x)
    return torch.sigmoid(model.decode(mu))
