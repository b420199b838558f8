"""vaelab: variational autoencoders and Laplace's method.

The Python API (docs in README, "Python quickstart"); names load on first use, so the
command line starts without importing torch:

    load_mnist, train, sample, evaluate, encode, reconstruct, score, load_model, pick_device, build_model,
    TrainConfig, ModelSpec, ObjectiveSpec, VaelabError
"""

from __future__ import annotations

import importlib
from typing import Any

from vaelab.errors import VaelabError

__version__ = "0.2.0"

_LAZY = {
    "load_mnist": "vaelab.api",
    "sample": "vaelab.api",
    "evaluate": "vaelab.api",
    "encode": "vaelab.api",
    "reconstruct": "vaelab.api",
    "score": "vaelab.api",
    "train": "vaelab.training",
    "load_model": "vaelab.checkpoint",
    "pick_device": "vaelab.distributed",
    "build_model": "vaelab.models",
    "TrainConfig": "vaelab.config",
    "ModelSpec": "vaelab.config",
    "ObjectiveSpec": "vaelab.config",
}
__all__ = ["VaelabError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
