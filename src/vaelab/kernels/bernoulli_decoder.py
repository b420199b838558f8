"""Kernel: log p(x|h) for many latent draws h per image through a Bernoulli MLP decoder.

Serves exactly: a model whose likelihood is Bernoulli with an MLP decoder ending in a linear
layer (any depth, any activation, one or two stochastic layers), evaluated without gradients
(the IWAE-k and Laplace-proposal importance samplers use it for float32 models; the tests hold
it to the model's own log-likelihood in float64). Laplace's Newton search
differentiates log p(x, z) and so goes through the model itself.

With logits l = W h' + b, h' the decoder's last hidden activation, the data term is
Σ_i x_i l_i = h'·(Wᵀx) + b·x: one (b, c, H) x (b, H) product per chunk instead of an
elementwise pass over the (c·b, P) logits, and the only pass over the logits left is
Σ_i softplus(l_i), done in place in a buffer reused from chunk to chunk.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.models.base import LatentVariableModel
from vaelab.nn import MLP

NAME = "fused-bernoulli-decoder"


def why_not(model: LatentVariableModel) -> str | None:
    """None if this kernel serves `model`'s likelihood, else the reason it does not."""
    likelihood = model.likelihood
    if likelihood.kind != "bernoulli":
        return f"likelihood {likelihood.kind} (serves bernoulli)"
    if not isinstance(likelihood.decoder, MLP):
        return f"decoder {type(likelihood.decoder).__name__} (serves MLP)"
    if not isinstance(likelihood.decoder.head, nn.Linear):
        return "the decoder does not end in a linear layer"
    return None


class FusedBernoulliDecoder:
    """log p(x|h) = Σ_i x_i l_i - softplus(l_i) for h (b, c, D_h), c draws of each of b images."""

    def __init__(
        self, model: LatentVariableModel, rows: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> None:
        decoder = model.likelihood.decoder
        self.trunk = decoder.trunk
        self.w = decoder.head.weight.detach().to(device, dtype).contiguous()  # (P, H)
        self.wt = self.w.T.contiguous()  # (H, P)
        self.b = decoder.head.bias.detach().to(device, dtype)
        self.logits = torch.empty(rows, self.w.shape[0], device=device, dtype=dtype)
        # One hidden layer of ReLU units (the PyTorch example's decoder): also its buffer reused.
        layers = list(self.trunk)
        self.linear_relu = len(layers) == 2 and isinstance(layers[0], nn.Linear) and isinstance(layers[1], nn.ReLU)
        if self.linear_relu:
            self.w1t = layers[0].weight.detach().to(device, dtype).T.contiguous()  # (D_h, H)
            self.b1 = layers[0].bias.detach().to(device, dtype)
            self.hidden = torch.empty(rows, self.w1t.shape[1], device=device, dtype=dtype)
        self.zero = torch.zeros((), device=device, dtype=dtype)

    @property
    def buffer_bytes(self) -> int:
        """Bytes held in reused buffers."""
        return self.logits.nbytes + (self.hidden.nbytes if self.linear_relu else 0)

    def data_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, P) -> Wᵀx (b, H) and b·x (b,)."""
        return x @ self.w, x @ self.b

    def log_likelihood(self, h: torch.Tensor, xw: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """h (b, c, D_h) -> log p(x|h) (b, c) nats, x given through `data_terms`."""
        b, c, d = h.shape
        rows = b * c
        flat = h.reshape(rows, d)
        if self.linear_relu:
            hidden = torch.addmm(self.b1, flat, self.w1t, out=self.hidden[:rows]).relu_()
        else:
            hidden = self.trunk(flat) if len(self.trunk) else flat
        logits = torch.addmm(self.b, hidden, self.wt, out=self.logits[:rows])
        data_term = torch.bmm(hidden.view(b, c, -1), xw.unsqueeze(2)).squeeze(2) + xb.unsqueeze(1)  # (b, c)
        torch.logaddexp(logits, self.zero, out=logits)  # softplus in place: log(1 + e^l), stable both ways
        return data_term - logits.sum(dim=1).view(b, c)
