"""Checkpoints: a plain dict written atomically, read without ever running code; `load_model`.

Writing goes through `vaelab.io.atomic_write` (temporary file, fsync, rename), so a crash,
`kill -9` or a full disk at any moment leaves the previous complete checkpoint in place.
Reading uses `torch.load(weights_only=True)`: a file that would need arbitrary pickled objects
(and so could execute code) is refused.
"""

from __future__ import annotations

import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.config import TrainConfig, from_dict
from vaelab.errors import VaelabError
from vaelab.io import atomic_write
from vaelab.models import build_model
from vaelab.models.base import LatentVariableModel

CHECKPOINT_NAME = "checkpoint.pt"
# 1: vaelab 0.1, the one MLP VAE with layers fc1..fc4 and (reconstruction, KL) running sums.
# 2: models built from ModelSpec blocks; running sums (loss, reconstruction, KL). `upgrade` reads 1.
FORMAT_VERSION = 2
_VERSION_1_LAYERS = {
    "fc1": "encoder.net.trunk.0",
    "fc2": "encoder.net.head",
    "fc3": "likelihood.decoder.trunk.0",
    "fc4": "likelihood.decoder.head",
}


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the run directory that holds one, -> the file's path."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise VaelabError(
            f"no checkpoint at {path}; pass a checkpoint file or a run directory that holds {CHECKPOINT_NAME}"
        )
    return path


def save(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically (vaelab.io.atomic_write): a full disk or a crash keeps the previous
    checkpoint."""
    atomic_write(path, lambda file: torch.save({**state, "format_version": FORMAT_VERSION}, file), what="checkpoint")


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save`; refuse anything that is not plain tensors and containers."""
    path = resolve(path)
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before refusing them; the refusal says it all.
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler refuses any global outside its allowlist before calling it.
        reason = re.search(r"unsupported (?:global: )?GLOBAL [\w.]+|Unsupported operand \d+", str(error), re.IGNORECASE)
        raise VaelabError(
            f"refused to load {path}: it holds something other than tensors and plain containers"
            f"{f' ({reason.group(0)})' if reason else ''}, so loading it could run code, or it is damaged; "
            f"only load checkpoints written by vaelab"
        ) from None
    except Exception as error:  # a damaged archive fails in many ways (RuntimeError, KeyError, IndexError, ...)
        message = str(error).strip().split("\n")[0].split(". ")[0]
        detail = "the file is empty" if path.stat().st_size == 0 else f"{type(error).__name__}: {message}"
        raise VaelabError(
            f"cannot read checkpoint {path} ({detail}); the file is truncated or damaged, "
            f"or not a vaelab checkpoint; use an intact copy"
        ) from None
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict)):
        raise VaelabError(f"{path} is not a vaelab checkpoint (no model weights and config inside)")
    return upgrade(state)


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of an older format as the current one (its config is upgraded by `config.from_dict`).

    Version 1 held the PyTorch example's MLP as fc1..fc4; the same weights, in the same order
    (so Adam's state still matches), are now the encoder's and the decoder's MLP layers. Its
    running sums (reconstruction, KL) gain the loss, their sum, in front.
    """
    version = state.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise VaelabError(
            f"the checkpoint has format {version}, newer than this vaelab reads ({FORMAT_VERSION}); upgrade vaelab"
        )
    if version == 1:
        state = dict(state)
        state["model"] = {_rename_version_1(key): value for key, value in state["model"].items()}
        if isinstance(state.get("running"), torch.Tensor) and state["running"].numel() == 2:
            state["running"] = torch.cat((state["running"].sum().reshape(1), state["running"]))
        state["format_version"] = FORMAT_VERSION
    return state


def _rename_version_1(key: str) -> str:
    layer, _, rest = key.partition(".")
    return f"{_VERSION_1_LAYERS[layer]}.{rest}" if layer in _VERSION_1_LAYERS else key


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[LatentVariableModel, TrainConfig]:
    """A checkpoint (file or run directory) -> (its model in eval mode, its TrainConfig)."""
    state = load(path, map_location)
    config = from_dict(TrainConfig, state["config"])
    model = build_model(config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise VaelabError(f"{path}: weights do not fit the saved architecture: {str(error).splitlines()[0]}") from None
    return model.to(map_location).eval(), config


def capture_rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (loadable with weights_only)."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt_state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
