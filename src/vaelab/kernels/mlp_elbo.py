"""Kernel: the -ELBO's gradient for the PyTorch VAE example's MLP, written out by hand.

Serves exactly: one stochastic layer, one hidden layer of ReLU units on each side, N(0, I)
prior, Bernoulli likelihood (`ModelSpec` with layers 1, depth 1, relu, normal, bernoulli); the
ELBO or β-ELBO (any KL weight, so KL warm-up too); one process, no anomaly detection, and no
`--autograd`. `why_not` says which of these a run misses; `vaelab.kernels.training_kernel` is
the one place that decides.

Autograd records a graph, allocates every gradient afresh and walks the graph back through
some forty small nodes each step; on a 2-core CPU, training through it took 1.45-1.57x as long
(bench/throughput.py, `--autograd` row). This gradient is short enough to write down
(docs/derivations.md, "The gradient by hand"), so the kernel computes it directly: the same
GEMMs autograd would run, in-place activations, and the gradients written straight into
preallocated `.grad` tensors that the fused Adam step then reads. `tests/test_kernels.py`
holds it to autograd in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vaelab.config import ModelSpec, ObjectiveSpec
from vaelab.kernels.runtime import Runtime
from vaelab.models.base import LatentVariableModel

NAME = "mlp-elbo-by-hand"


def why_not(model: ModelSpec, objective: ObjectiveSpec, runtime: Runtime) -> str | None:
    """None if this kernel serves the run, else the first reason it does not."""
    checks = (
        (model.network == "mlp", f"network {model.network} (serves mlp)"),
        (model.layers == 1, f"{model.layers} stochastic layers (serves 1)"),
        (model.depth == 1, f"depth {model.depth} (serves one hidden layer)"),
        (model.activation == "relu", f"activation {model.activation} (serves relu)"),
        (model.prior == "normal", f"prior {model.prior} (serves normal)"),
        (model.likelihood == "bernoulli", f"likelihood {model.likelihood} (serves bernoulli)"),
        (objective.name in ("elbo", "beta"), f"objective {objective.name} (serves elbo, beta)"),
        (runtime.world_size == 1, f"{runtime.world_size} processes (DistributedDataParallel needs autograd)"),
        (not runtime.detect_anomaly, "--detect-anomaly (needs autograd's graph)"),
        (not runtime.autograd, "--autograd asked for"),
    )
    return next((reason for holds, reason in checks if not holds), None)


def batch_negative_elbo(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed over the batch: (reconstruction, KL), two scalars in nats.

    One fused BCE-with-logits call over the whole (B, P) batch, much faster than per-image rows.
    """
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum()
    return reconstruction, kl


# ReLU's backward (autograd's own kernel): passes the gradient where the activation is > 0.
# One fused pass; `grad * (h > 0)` costs a bool tensor and a type promotion, 7x slower here.
_relu_backward = torch.ops.aten.threshold_backward


def parameters(model: LatentVariableModel) -> tuple[torch.Tensor, ...]:
    """The eight weight tensors in the order `negative_elbo_gradients` takes them:
    W1 (H, P), b1 (H,), W2 (2D, H), b2 (2D,), W3 (H, D), b3 (H,), W4 (P, H), b4 (P,)."""
    encoder, decoder = model.encoder.net, model.likelihood.decoder
    layers = (encoder.trunk[0], encoder.head, decoder.trunk[0], decoder.head)
    return tuple(tensor for layer in layers for tensor in (layer.weight, layer.bias))


def negative_elbo_gradients(
    weights: tuple[torch.Tensor, ...],
    x: torch.Tensor,
    eps: torch.Tensor,
    grads: tuple[torch.Tensor, ...],
    compute_dtype: torch.dtype | None = None,
    kl_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-ELBO summed over the batch, and its gradient with respect to every weight.

    weights: `parameters(model)`, detached; x (B, P) pixels in [0, 1]; eps (B, D) ~ N(0, I), the
    reparameterization noise. Writes d(reconstruction + KL)/d(weight) into `grads` (same shapes
    as `weights`, overwritten, not accumulated) and returns (reconstruction, KL): two scalars,
    nats summed over the batch (the unweighted KL); the gradient is that of reconstruction + kl_weight · KL.
    `compute_dtype` (e.g. torch.bfloat16) runs the matrix products in that type, as autocast
    would; the loss, the latent code and the gradients stay in x's type.
    """
    g_w1, g_b1, g_w2, g_b2, g_w3, g_b3, g_w4, g_b4 = grads
    dtype = compute_dtype or x.dtype

    def low(tensor: torch.Tensor) -> torch.Tensor:  # operand of a matrix product
        return tensor.to(dtype)

    w1, b1, w2, b2, w3, b3, w4, b4 = (low(w) for w in weights)
    latent_dim = eps.shape[1]

    # --- forward (encoder, reparameterization, decoder) --------------------------------------------------------------
    x_low = low(x)
    h1 = torch.addmm(b1, x_low, w1.t()).relu_()  # (B, H)
    encoded = torch.addmm(b2, h1, w2.t()).to(x.dtype)  # (B, 2D)
    mu, logvar = encoded[:, :latent_dim], encoded[:, latent_dim:]
    sigma = torch.exp(0.5 * logvar)  # (B, D)
    z = torch.addcmul(mu, sigma, eps)  # (B, D), paper eq. 10
    z_low = low(z)
    h3 = torch.addmm(b3, z_low, w3.t()).relu_()  # (B, H)
    logits = torch.addmm(b4, h3, w4.t()).to(x.dtype)  # (B, P)
    reconstruction, kl = batch_negative_elbo(logits, x, mu, logvar)

    # --- backward: d/d(logits) of the summed BCE is sigmoid(logits) - x ---------------------
    d_logits = torch.sigmoid(logits).sub_(x)  # (B, P)
    d_logits_low = low(d_logits)
    _mm_into(g_w4, d_logits_low.t(), h3)
    torch.sum(d_logits, dim=0, out=g_b4)
    d_a3 = _relu_backward(d_logits_low.mm(w4), h3, 0)  # (B, H)
    _mm_into(g_w3, d_a3.t(), z_low)
    _sum_into(g_b3, d_a3)
    d_z = d_a3.mm(w3).to(x.dtype)  # (B, D)
    # through z = mu + sigma * eps and w times the KL's 1/2 (mu^2 + sigma^2 - 1 - logvar):
    # d/d(mu) = d_z + w mu, d/d(logvar) = (d_z * eps * sigma + w (sigma^2 - 1)) / 2 (w = 1: exactly the ELBO's)
    if kl_weight == 1.0:  # the ELBO, in the order of operations of vaelab 0.1 (same rounding, same runs)
        d_encoded = torch.cat((d_z + mu, (d_z * eps * sigma + sigma.square() - 1.0) * 0.5), dim=1)  # (B, 2D)
    else:
        d_kl_logvar = kl_weight * (sigma.square() - 1.0)
        d_encoded = torch.cat((d_z + kl_weight * mu, (d_z * eps * sigma + d_kl_logvar) * 0.5), dim=1)
    d_encoded_low = low(d_encoded)
    _mm_into(g_w2, d_encoded_low.t(), h1)
    torch.sum(d_encoded, dim=0, out=g_b2)
    d_a1 = _relu_backward(d_encoded_low.mm(w2), h1, 0)  # (B, H)
    _mm_into(g_w1, d_a1.t(), x_low)  # no gradient for the pixels themselves
    _sum_into(g_b1, d_a1)
    return reconstruction.detach(), kl.detach()


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out = a @ b, written in place (cast back when the product ran in a lower precision)."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(torch.mm(a, b))


def _sum_into(out: torch.Tensor, rows: torch.Tensor) -> None:
    """out = rows (B, n) summed over the batch, accumulated in out's type."""
    if rows.dtype == out.dtype:
        torch.sum(rows, dim=0, out=out)
    else:
        out.copy_(rows.sum(dim=0, dtype=out.dtype))


class Step:
    """The kernel bound to one model: step(x (B, P), eps (1, B, D), kl_weight) writes every .grad
    and returns the batch sums (loss, reconstruction, KL) as one (3,) float64 tensor, nats."""

    def __init__(self, model: LatentVariableModel, compute_dtype: torch.dtype | None = None) -> None:
        parameters_in_order = parameters(model)
        self.weights = tuple(parameter.detach() for parameter in parameters_in_order)
        for parameter in parameters_in_order:  # the gradients stay in place from step to step, overwritten
            parameter.grad = torch.zeros_like(parameter)
        self.grads = tuple(parameter.grad for parameter in parameters_in_order)
        self.compute_dtype = compute_dtype

    def __call__(self, x: torch.Tensor, eps: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        terms = torch.stack(
            negative_elbo_gradients(self.weights, x, eps[0], self.grads, self.compute_dtype, kl_weight)
        ).double()
        return torch.cat((terms[0:1] + kl_weight * terms[1:2], terms))  # (loss, reconstruction, KL)
