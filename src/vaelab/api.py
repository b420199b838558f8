"""The Python API in a few verbs: load data, train, sample, evaluate (README "Python quickstart").

import vaelab
train_x, test_x = vaelab.load_mnist()
result = vaelab.train(vaelab.TrainConfig(epochs=2), train_x, test_x, progress=False)
images = vaelab.sample(result.model, 16)
report = vaelab.evaluate(result.model, test_x[:500], ks=(1, 100))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from vaelab.evaluation import Estimate, active_units, importance_weighted_evaluation, laplace_evidence
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
