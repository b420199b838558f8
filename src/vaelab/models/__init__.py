"""The model family: one interface (`base.LatentVariableModel`), built from a ModelSpec.

build_model(ModelSpec())                       # the PyTorch VAE example's MLP
build_model(ModelSpec(latent_dims=(100, 50)))  # two stochastic layers
"""

from __future__ import annotations

from vaelab.config import ModelSpec
from vaelab.models.base import (
    DiagonalGaussian,
    LatentVariableModel,
    Posterior,
    parameter_count,
    reconstruct_means,
    sample_means,
)
from vaelab.models.hierarchical import TwoLayerVAE
from vaelab.models.vae import VAE

# One class per number of stochastic layers; everything else is configuration.
MODELS = {1: VAE, 2: TwoLayerVAE}


def build_model(spec: ModelSpec = ModelSpec()) -> LatentVariableModel:
    """The model `spec` describes, initialised from the global generator (seed it first)."""
    return MODELS[spec.layers](spec)


__all__ = [
    "MODELS",
    "DiagonalGaussian",
    "LatentVariableModel",
    "Posterior",
    "TwoLayerVAE",
    "VAE",
    "build_model",
    "parameter_count",
    "reconstruct_means",
    "sample_means",
]
