"""Training objectives as functions of (model, x, noise), each returning its terms in nats per image.

Sign conventions (docs/derivations.md): log p(x) = ELBO + KL(q(z|x) || p(z|x)) with
ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)); we minimise -ELBO = reconstruction + KL, where
reconstruction = -log p(x|z) (for Bernoulli pixels, the binary cross-entropy summed over pixels).

Every objective takes eps (k, B, D) ~ N(0, I), the reparameterization noise (k = 1 for the ELBO),
and returns `Terms`: per-image loss, reconstruction and KL (B,), and the scalar `surrogate`
whose gradient is the objective's gradient (the batch sum of the loss, except for DReG).
No loss lives in a model, and no model lives here: any `LatentVariableModel` will do.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from vaelab.config import ObjectiveSpec
from vaelab.distributions import log_mean_exp
from vaelab.models.base import LatentVariableModel


@dataclass
class Terms:
    """One batch's terms, each (B,) nats per image, and the scalar to differentiate."""

    loss: torch.Tensor  # what training minimises, per image (-ELBO, -β-ELBO, -L_k)
    reconstruction: torch.Tensor  # -E_q[log p(x|z)], estimated with the batch's samples
    kl: torch.Tensor  # KL(q(z|x) || p(z)): analytic where the prior offers it, else Monte Carlo
    surrogate: torch.Tensor  # scalar; surrogate.backward() gives the objective's gradient


def elbo(model: LatentVariableModel, x: torch.Tensor, eps: torch.Tensor, kl_weight: float = 1.0) -> Terms:
    """-ELBO = -log p(x|z) + w · KL(q(z|x) || p(z)), z = the reparameterized draw from eps[0].

    x (B, P); eps (1, B, D). The KL is analytic when `model.analytic_kl` gives it (derivation (b)),
    else the one-sample Monte Carlo estimate log q(z|x) - log p(z). kl_weight w = 1 is the ELBO;
    w = β is the β-ELBO, and a KL warm-up lets w rise from 0 (`kl_weight_at`).
    """
    posterior = model.posterior(x)
    z = posterior.rsample(eps[0])  # (B, D)
    reconstruction = -model.log_likelihood(x, z)  # (B,)
    kl = model.analytic_kl(posterior)
    if kl is None:
        kl = posterior.log_prob(z) - model.log_prior(z)
    loss = reconstruction + kl_weight * kl if kl_weight != 1.0 else reconstruction + kl
    return Terms(loss=loss, reconstruction=reconstruction, kl=kl, surrogate=loss.sum())


def _log_weights(model: LatentVariableModel, x: torch.Tensor, eps: torch.Tensor, stopped: bool):
    """log w_i = log p(x, z_i) - log q(z_i|x) for z_i from eps (k, B, D): (z, log w, log p(x|z), log q - log p(z))."""
    posterior = model.posterior(x)
    z = posterior.rsample(eps)  # (k, B, D)
    log_likelihood = model.log_likelihood(x, z)  # (k, B)
    log_q = posterior.log_prob_stopped(z) if stopped else posterior.log_prob(z)
    log_q_over_prior = log_q - model.log_prior(z)  # (k, B)
    return z, log_likelihood - log_q_over_prior, log_likelihood, log_q_over_prior


def iwae(model: LatentVariableModel, x: torch.Tensor, eps: torch.Tensor) -> Terms:
    """-L_k = -log (1/k) Σ_i p(x, z_i) / q(z_i|x) (Burda et al. 2015, eq. 8), z_i from eps (k, B, D).

    reconstruction and KL are the k samples' averages of -log p(x|z) and log q - log p(z)
    (their sum is the k-sample average -ELBO, an upper bound on -L_k).
    """
    _, log_weights, log_likelihood, log_q_over_prior = _log_weights(model, x, eps, stopped=False)
    loss = -log_mean_exp(log_weights, dim=0)  # (B,)
    return Terms(loss=loss, reconstruction=-log_likelihood.mean(0), kl=log_q_over_prior.mean(0), surrogate=loss.sum())


def dreg(model: LatentVariableModel, x: torch.Tensor, eps: torch.Tensor) -> Terms:
    """-L_k with the doubly reparameterized gradient (Tucker et al. 2018, eq. 5), z_i from eps (k, B, D).

    With w̃_i = w_i / Σ_j w_j and log q evaluated with its parameters held constant, the model's
    parameters get Σ_i w̃_i ∇ log w_i (IWAE's gradient) and the encoder's, through z only,
    Σ_i w̃_i² ∂log w_i/∂z_i ∂z_i/∂φ: lower variance as k grows. The squared weight is made by a
    hook that scales the gradient arriving at each z_i by w̃_i on top of the surrogate's w̃_i.
    `loss` is -L_k itself; `surrogate` only carries the gradient.
    """
    z, log_weights, log_likelihood, log_q_over_prior = _log_weights(model, x, eps, stopped=True)
    normalised = torch.softmax(log_weights.detach(), dim=0)  # (k, B) w̃
    if z.requires_grad:
        z.register_hook(lambda gradient: gradient * normalised.unsqueeze(-1))
    loss = -log_mean_exp(log_weights.detach(), dim=0)
    surrogate = -(normalised * log_weights).sum()
    return Terms(
        loss=loss,
        reconstruction=-log_likelihood.mean(0).detach(),
        kl=log_q_over_prior.mean(0).detach(),
        surrogate=surrogate,
    )


def kl_weight_at(spec: ObjectiveSpec, progress_epochs: float) -> float:
    """The KL weight after `progress_epochs` epochs of training (fractional): β · min(1, progress / warm-up)."""
    beta = spec.beta if spec.name == "beta" else 1.0
    if spec.warmup_epochs <= 0:
        return beta
    return beta * min(1.0, progress_epochs / spec.warmup_epochs)


def compute(
    spec: ObjectiveSpec, model: LatentVariableModel, x: torch.Tensor, eps: torch.Tensor, kl_weight: float = 1.0
) -> Terms:
    """`spec`'s objective on one batch: x (B, P), eps (k, B, D)."""
    if spec.name in ("elbo", "beta"):
        return elbo(model, x, eps, kl_weight)
    return {"iwae": iwae, "dreg": dreg}[spec.name](model, x, eps)


class ObjectiveModule(torch.nn.Module):
    """model + objective as one module whose forward(x, eps, kl_weight) returns Terms.

    DistributedDataParallel synchronises gradients of the module it wraps only through that
    module's forward; wrapping this (not the model) keeps the objective outside the model.
    """

    def __init__(self, model: LatentVariableModel, spec: ObjectiveSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x: torch.Tensor, eps: torch.Tensor, kl_weight: float = 1.0) -> Terms:
        return compute(self.spec, self.model, x, eps, kl_weight)
