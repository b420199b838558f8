"""The Python API in a few verbs: load data, train, sample, evaluate; encode, reconstruct, score any images
(README "Python quickstart").

import vaelab
train_x, test_x = vaelab.load_mnist()
result = vaelab.train(vaelab.TrainConfig(epochs=2), train_x, test_x, progress=False)
images = vaelab.sample(result.model, 16)
report = vaelab.evaluate(result.model, test_x[:500], ks=(1, 100))
codes = vaelab.encode(result.model, test_x[:500])["mean_1"]  # (500, 20) posterior means
nats = vaelab.score(result.model, test_x[:500], ks=(1, 100))["L_100"]  # (500,) per image
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from vaelab.data.transforms import prepare
from vaelab.errors import VaelabError
from vaelab.evaluation import Estimate, active_units, importance_weighted_evaluation, laplace_evidence
from vaelab.evaluation.per_image import encode_block, reconstruct_block, score_block
from vaelab.evaluation.runner import is_total
from vaelab.evaluation.shards import ShardPlan
from vaelab.models.base import LatentVariableModel, sample_means


def load_mnist(dataset: str = "mnist", binarize: str = "none", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The verified training (60 000) and test (10 000) images as float pixels (N, 784) in [0, 1].

    Fetched into the cache on first use. binarize: none (grey levels), threshold (x > 0.5), or
    dynamic (one Bernoulli draw with `seed`; training with TrainConfig(binarize="dynamic")
    draws afresh every step instead, so pass grey levels to `train` then).
    """
    from vaelab import data

    loaded = data.load_dataset(dataset)
    generator = torch.Generator().manual_seed(seed)
    return tuple(data.binarize(data.pixels(split.images), binarize, generator) for split in (loaded.train, loaded.test))


def sample(model: LatentVariableModel, n: int, seed: int = 0) -> torch.Tensor:
    """n images from p(x) = ∫ p(x|z) p(z) dz shown as decoder means E[x|z], (n, P) in [0, 1]."""
    return sample_means(
        model.eval(), n, torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    ).cpu()


@dataclass(frozen=True)
class Evaluation:
    """`evaluate`'s numbers, in nats per image: L_k for each k, the Laplace evidence, active units."""

    bounds: dict[int, Estimate]
    laplace: Estimate | None
    active_units: int

    def __str__(self) -> str:
        lines = [f"L_{k:<5} {estimate.mean:10.3f} ± {estimate.stderr:.3f} nats" for k, estimate in self.bounds.items()]
        if self.laplace is not None:
            lines.append(f"Laplace {self.laplace.mean:10.3f} ± {self.laplace.stderr:.3f} nats")
        lines.append(f"active units: {self.active_units}")
        return "\n".join(lines)


def evaluate(
    model: LatentVariableModel, x: torch.Tensor, ks: Sequence[int] = (1, 100), *, laplace: bool = True, seed: int = 0
) -> Evaluation:
    """Importance-weighted bounds L_k on log p(x) (k = 1 is the ELBO), the Laplace evidence and active units over x
    (N, P)."""
    model = model.eval()
    bounds = importance_weighted_evaluation(model, x, ks, seed=seed).bounds
    evidence = laplace_evidence(model, x).estimate if laplace else None
    return Evaluation(bounds, evidence, active_units(model, x)[0])


# ---------------------------------------------------------------------------------------------
# Using a trained model on any images: per-image arrays in input order (scvi-tools' shape).


def encode(
    model: LatentVariableModel, images: torch.Tensor, *, binarize: str = "none", seed: int = 0, samples: int = 0
) -> dict[str, np.ndarray]:
    """The posterior of each image: "mean_1", "logvar_1" (N, D1) (and "mean_2", "logvar_2" for two layers) —
    the mean, not a draw; samples S > 0 adds "z" (N, S, D), draws from q(z|x) seeded by image index.

    images: uint8 (N, H, W) / (N, C, H, W), or float pixels (N, P) in [0, 1], binarized by `binarize` (pass the
    run's: `model, config = load_model(RUN)`, then `binarize=config.binarize`; dynamic = one draw seeded by seed).
    """
    x = prepare(torch.as_tensor(images), model.spec, binarize, seed)
    return _numpy(encode_block(model, x, 0, samples, seed))


def reconstruct(
    model: LatentVariableModel, images: torch.Tensor, *, binarize: str = "none", seed: int = 0
) -> np.ndarray:
    """Decoder means E[x|z] at each image's posterior mean z = E_q[z|x]: (N, P) in [0, 1], (C, H, W) order."""
    x = prepare(torch.as_tensor(images), model.spec, binarize, seed)
    return reconstruct_block(model, x)["mean"].numpy()


def score(
    model: LatentVariableModel,
    images: torch.Tensor,
    ks: Sequence[int] = (1, 100),
    *,
    binarize: str = "none",
    seed: int = 0,
    laplace: bool = False,
    laplace_k: int = 100,
) -> dict[str, np.ndarray]:
    """Per image, in nats: "L_<k>" for each k (estimates of lower bounds on log p(x)), "elbo",
    "reconstruction" (-E_q log p(x|z)), "kl", and with laplace "laplace" and "laplace_is"; float64 (N,).
    Their means are `vaelab evaluate`'s figures for the same images, seed and ks."""
    if not ks or min(ks) < 1:
        raise VaelabError(f"every k must be >= 1 (got {list(ks)})")
    x = prepare(torch.as_tensor(images), model.spec, binarize, seed)
    device = next(model.parameters()).device
    plan = ShardPlan(tuple(sorted(set(ks))), seed, laplace, laplace_k)
    values = score_block(model.eval(), x, 0, plan, device)
    return {name: value.numpy() for name, value in values.items() if not is_total(name)}


def _numpy(values: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in values.items()}
