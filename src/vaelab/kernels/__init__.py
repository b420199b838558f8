"""Fast paths as kernels, each declaring exactly what it serves; autograd serves everything else.

A kernel's `why_not(...)` returns None where it applies and otherwise the reason it does not;
the functions below are the one place where a run's path is chosen (as nanoGPT decides its
flash-attention path in one visible line). Every kernel is held to autograd in float64 by
tests/test_kernels.py, and a model outside a kernel's support never takes it.

- `mlp_elbo`: the -ELBO's gradient written out by hand for the PyTorch VAE example's MLP (training).
- `bernoulli_decoder`: log p(x|z) for many z per image through a Bernoulli MLP decoder with
  reused buffers and a fused data term (evaluation: IWAE-k, Laplace-proposal sampling).
"""

from __future__ import annotations

from types import ModuleType

from vaelab.config import ModelSpec, ObjectiveSpec
from vaelab.kernels import bernoulli_decoder, mlp_elbo
from vaelab.kernels.runtime import Runtime
from vaelab.models.base import LatentVariableModel

TRAINING_KERNELS: tuple[ModuleType, ...] = (mlp_elbo,)


def training_kernel(model: ModelSpec, objective: ObjectiveSpec, runtime: Runtime) -> ModuleType | None:
    """The first training kernel that serves (model, objective, runtime), or None for autograd."""
    return next((kernel for kernel in TRAINING_KERNELS if kernel.why_not(model, objective, runtime) is None), None)


def training_path(model: ModelSpec, objective: ObjectiveSpec, runtime: Runtime) -> str:
    """One line for the run's log: which kernel trains it, or why autograd does."""
    kernel = training_kernel(model, objective, runtime)
    if kernel is not None:
        return f"gradient: kernel {kernel.NAME}"
    reasons = "; ".join(f"{kernel.NAME}: {kernel.why_not(model, objective, runtime)}" for kernel in TRAINING_KERNELS)
    return f"gradient: autograd ({reasons})"


def evaluation_decoder(model: LatentVariableModel) -> bernoulli_decoder.FusedBernoulliDecoder | None:
    """The fused decoder kernel's class if it serves `model`'s likelihood, else None (generic path)."""
    return bernoulli_decoder.FusedBernoulliDecoder if bernoulli_decoder.why_not(model) is None else None


__all__ = ["Runtime", "TRAINING_KERNELS", "evaluation_decoder", "training_kernel", "training_path"]
