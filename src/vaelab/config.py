"""Frozen settings, one dataclass per command, with a strict JSON round trip.

Each command builds its config once from the command line, saves it beside the run as
`config.json`, and passes it down; nothing reads settings from globals. Unknown keys are an
error, never silently ignored (a typo in a saved config must not change a run).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vaelab.errors import VaelabError

VERIFIED_DATASETS = ("mnist", "fashion-mnist")  # pinned digests; fetched into the cache
USER_DATASET = "idx"  # a user's own IDX files in MNIST's layout, checked for structure only
DATASETS = (*VERIFIED_DATASETS, USER_DATASET)
BINARIZE_MODES = ("none", "dynamic", "threshold")
PRECISIONS = ("fp32", "bf16")

C = TypeVar("C")


@dataclass(frozen=True)
class ModelConfig:
    """The sheet's MLP: input_dim -> hidden (ReLU) -> 2 x latent_dim, and back."""

    input_dim: int = 784
    hidden: int = 400
    latent_dim: int = 20

    def __post_init__(self) -> None:
        _require(self.input_dim >= 1, "input_dim must be >= 1")
        _require(self.hidden >= 1, f"--hidden must be >= 1 (got {self.hidden})")
        _require(self.latent_dim >= 1, f"--latent-dim must be >= 1 (got {self.latent_dim})")


@dataclass(frozen=True)
class TrainConfig:
    """`vaelab train`: the PyTorch VAE example's settings are the defaults."""

    dataset: str = "mnist"
    data_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 1
    binarize: str = "none"
    train_size: int = 0  # 0 = the whole training split; else its first N images
    test_size: int = 0  # 0 = the whole test split
    device: str = "auto"
    threads: int = 0  # 0 = torch's default (one per core)
    precision: str = "fp32"
    detect_anomaly: bool = False
    autograd: bool = False  # gradients by autograd instead of vaelab.backprop (always so under torchrun)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = once per epoch

    def __post_init__(self) -> None:
        _require(self.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)} (got {self.dataset!r})")
        _require(self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})")
        _require(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        _require(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number (got {self.lr})")
        _require(self.binarize in BINARIZE_MODES, f"--binarize must be one of {', '.join(BINARIZE_MODES)} (got {self.binarize!r})")
        _require(self.train_size >= 0, f"--train-size must be >= 0 (got {self.train_size})")
        _require(self.test_size >= 0, f"--test-size must be >= 0 (got {self.test_size})")
        _require(self.threads >= 0, f"--threads must be >= 0 (got {self.threads})")
        _require(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        _require(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 (got {self.checkpoint_every})")


@dataclass(frozen=True)
class EvaluateConfig:
    """`vaelab evaluate`: importance-weighted bounds, Laplace evidence, active units."""

    checkpoint: str = ""
    ks: tuple[int, ...] = (1, 10, 100, 1000, 5000)
    split: str = "test"
    binarize: str = "auto"  # "auto" = as the model was trained
    seed: int = 0
    size: int = 0  # 0 = whole split, else its first N images
    laplace: bool = True
    laplace_k: int = 100  # samples for Laplace-proposal importance sampling
    batch_size: int = 0  # images per chunk; 0 = chosen from the memory budget
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        _require(len(self.ks) >= 1 and all(k >= 1 for k in self.ks), f"--k values must be >= 1 (got {list(self.ks)})")
        _require(self.split in ("train", "test"), f"--split must be train or test (got {self.split!r})")
        _require(self.binarize in (*BINARIZE_MODES, "auto"), f"--binarize must be auto or one of {', '.join(BINARIZE_MODES)}")
        _require(self.size >= 0, f"--size must be >= 0 (got {self.size})")
        _require(self.laplace_k >= 1, f"--laplace-k must be >= 1 (got {self.laplace_k})")
        _require(self.batch_size >= 0, f"--batch-size must be >= 0 (got {self.batch_size})")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise VaelabError(message)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-ready values (nested configs become nested dicts)."""
    return dataclasses.asdict(config)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild `cls` from `to_dict`'s output; an unknown key or a wrong type is an error."""
    if not isinstance(data, dict):
        raise VaelabError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise VaelabError(
            f"unknown {cls.__name__} key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}"
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default
        if default is dataclasses.MISSING and fields[name].default_factory is not dataclasses.MISSING:
            default = fields[name].default_factory()
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value)
        elif isinstance(default, tuple):
            value = tuple(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise VaelabError(f"bad {cls.__name__}: {error}") from None


def save_json(config: Any, path: str | Path) -> None:
    """Write a config as indented JSON."""
    Path(path).write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")


def load_json(cls: type[C], path: str | Path) -> C:
    """Read a config written by `save_json`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise VaelabError(f"cannot read config {path}: {error}") from None
    return from_dict(cls, data)
