"""Building blocks, configured rather than subclassed: MLP trunks and the heads on top of them.

An `MLP` is `depth` hidden layers of `width` units with one activation, then a linear head;
a `GaussianMLP` reads the head's 2·D outputs as (mu, log σ²). Layers are created in the order
they are applied, with PyTorch's default initialisation, so a model built from these blocks
draws its initial weights from the global generator exactly as the hand-written modules they
replace did (the PyTorch VAE example's `fc1`..`fc4`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus, "gelu": nn.GELU}


class MLP(nn.Module):
    """x (..., in_dim) -> `depth` x [Linear(width), activation] -> Linear(out_dim): (..., out_dim).

    `trunk` holds the hidden layers (an nn.Sequential, empty when depth = 0) and `head` the
    final linear layer, so a fast path can reach the last hidden activation `trunk(x)`.
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, activation: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(depth):
            layers += [nn.Linear(in_dim if index == 0 else width, width), ACTIVATIONS[activation]()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width if depth else in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class GaussianMLP(nn.Module):
    """x (..., in_dim) -> mu, logvar (..., out_dim): the parameters of N(mu, diag exp(logvar)).

    mu and logvar come from one linear head of 2·out_dim outputs (one matrix product instead of
    two; same fan-in, so the same initial distribution as two separate heads). Under autocast
    they come back in float32, the type the log-densities and the KL are computed in.
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, activation: str = "relu") -> None:
        super().__init__()
        self.net = MLP(in_dim, width, depth, 2 * out_dim, activation)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = full_precision(self.net(x)).chunk(2, dim=-1)
        return mu, logvar


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """A bfloat16/float16 result of autocast back in float32; float32 and float64 pass unchanged."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


@contextlib.contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[bool]:
    """Within the block, CPU arithmetic flushes subnormal floats (|x| < 1.2e-38 in float32) to zero.

    Trained VAEs drift into subnormal values (tiny gradients, Adam moments, saturated units), and
    x86 CPUs handle those in microcode: a trained VampPrior DReG forward and backward measured 86 ms
    with them and 28 ms without, on a loaded machine (bench/denormals.py, bench/README.md).
    Flushing changes results only below float32's normal range. The setting is process-wide and
    torch cannot read it back, so the block switches it off again on exit if it switched it on.
    Yields whether flushing is in effect (False where the CPU cannot flush).
    """
    active = bool(enabled) and torch.set_flush_denormal(True)
    try:
        yield active
    finally:
        if active:
            torch.set_flush_denormal(False)
