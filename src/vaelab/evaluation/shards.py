"""Evaluation in shards of images: each shard's per-image values depend on that shard alone, so shards can
be computed apart (a run resumed after a kill, the ranks of torchrun) and merged into the one result a
single pass gives.

Every estimator draws its noise by the image's index in the whole set (`first_image`), and a shard's
batches do not depend on which process computes it, so a merged result equals the single pass's bit
for bit. Files, resumption and ranks are `vaelab.evaluation.runner`'s: this module computes and summarises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from vaelab.evaluation.common import Estimate
from vaelab.evaluation.iwae import importance_weighted_evaluation
from vaelab.evaluation.laplace import laplace_evidence, laplace_importance_sampling
from vaelab.models.base import LatentVariableModel


@dataclass(frozen=True)
class ShardPlan:
    """What every shard computes: the bounds L_k, and optionally Laplace and Laplace-IS with laplace_k samples."""

    ks: tuple[int, ...]
    seed: int
    laplace: bool
    laplace_k: int
    batch_size: int = 0


def evaluate_shard(
    model: LatentVariableModel, x: torch.Tensor, first_image: int, plan: ShardPlan, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-image values (float64, (n,)) of the images first_image .. first_image + n of the set, x (n, P):
    "L_k" for each k, "log_likelihood", "kl", and with Laplace "laplace", "laplace_is", "unconverged" and
    "indefinite" (counts, (1,)); "seconds_<name>" (1,) are each estimator's wall time on this shard."""
    iwae = importance_weighted_evaluation(
        model, x, plan.ks, seed=plan.seed, batch_size=plan.batch_size, device=device, first_image=first_image
    )
    values = dict(iwae.per_image or {})
    for k, estimate in iwae.bounds.items():
        values[f"seconds_L_{k}"] = torch.tensor([estimate.seconds], dtype=torch.float64)
    values["seconds_elbo"] = torch.tensor([iwae.elbo.seconds], dtype=torch.float64)
    if plan.laplace:
        started = time.perf_counter()
        evidence = laplace_evidence(model, x, device=device)
        values["laplace"] = evidence.log_evidence.double()
        values["seconds_laplace"] = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
        per_image = torch.empty(x.shape[0], dtype=torch.float64)
        estimate = laplace_importance_sampling(
            model,
            x,
            plan.laplace_k,
            seed=plan.seed,
            z_star=evidence.z_star,
            neg_hessian=evidence.neg_hessian,
            device=device,
            first_image=first_image,
            per_image=per_image,
        )
        values["laplace_is"] = per_image
        values["seconds_laplace_is"] = torch.tensor([estimate.seconds], dtype=torch.float64)
        values["unconverged"] = torch.tensor([evidence.unconverged], dtype=torch.float64)
        values["indefinite"] = torch.tensor([evidence.indefinite], dtype=torch.float64)
    return values


def estimates(merged: dict[str, torch.Tensor], ks: Sequence[int]) -> dict[str, Estimate]:
    """Estimates (mean and stderr over images, seconds) of the merged values: "L_k", "elbo", "reconstruction",
    "kl", and "laplace", "laplace_is" where computed."""
    elbo_seconds = float(merged["seconds_elbo"])
    result = {f"L_{k}": Estimate.from_values(merged[f"L_{k}"], float(merged[f"seconds_L_{k}"])) for k in ks}
    result["elbo"] = Estimate.from_values(merged["log_likelihood"] - merged["kl"], elbo_seconds)
    result["reconstruction"] = Estimate.from_values(-merged["log_likelihood"], elbo_seconds)
    result["kl"] = Estimate.from_values(merged["kl"], elbo_seconds)
    for name in ("laplace", "laplace_is"):
        if name in merged:
            result[name] = Estimate.from_values(merged[name], float(merged[f"seconds_{name}"]))
    return result
