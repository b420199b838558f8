"""Frozen settings, one dataclass per command, with a strict JSON round trip.

Each command builds its config once from the command line, saves it beside the run as
`config.json`, and passes it down; nothing reads settings from globals. Unknown keys are an
error, never silently ignored (a typo in a saved config must not change a run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vaelab.errors import VaelabError
from vaelab.integrity import check_schema
from vaelab.io import atomic_write

VERIFIED_DATASETS = ("mnist", "fashion-mnist")  # pinned digests; fetched into the cache
USER_DATASET = "idx"  # a user's own IDX files (any image size), checked for structure only
IMAGE_DATASETS = ("folder", "array")  # a folder of PNG/JPEG files, or a .npy/.npz of uint8 images
DATASETS = (*VERIFIED_DATASETS, USER_DATASET, *IMAGE_DATASETS)
BINARIZE_MODES = ("none", "dynamic", "threshold")
PRECISIONS = ("fp32", "bf16")
DENORMALS = ("flush", "keep")
PRIORS = ("normal", "vamp")
LIKELIHOODS = ("bernoulli", "gaussian", "logistic", "logistic-mixture")
DISCRETE_LIKELIHOODS = ("logistic", "logistic-mixture")  # 8-bit pixels: a pmf over 256 levels, bits/dim
NETWORKS = ("mlp", "conv", "resnet")
ACTIVATION_NAMES = ("relu", "tanh", "elu", "softplus", "gelu")
OBJECTIVES = ("elbo", "beta", "iwae", "dreg")
MAX_LAYERS = 2
LR_SCHEDULES = ("constant", "cosine")

C = TypeVar("C")


@dataclass(frozen=True)
class ModelSpec:
    """A latent-variable model built from blocks (docs/models.md); the default is the PyTorch VAE example's MLP.

    One stochastic layer: q(z|x) = N(mu(x), diag σ²(x)) from an MLP, p(x|z) from an MLP, prior p(z).
    Two (Burda et al. 2015): q(z1|x) q(z2|z1), p(z2) p(z1|z2) p(x|z1); the latent is (z1, z2).
    `latent_dims` and `hidden` have one entry per stochastic layer, the one next to x first;
    every MLP has `depth` hidden layers of that layer's width and the same activation.
    """

    input_dim: int = 784
    image_shape: tuple[int, ...] = ()  # (C, H, W); () = a flat vector (an MLP), pictured as a square if it is one
    network: str = "mlp"  # the encoder and decoder next to x: mlp, conv (strided convolutions) or resnet
    channels: int = 32  # conv and resnet: channels at full resolution, doubled at each halving
    latent_dims: tuple[int, ...] = (20,)
    hidden: tuple[int, ...] = (400,)
    depth: int = 1
    activation: str = "relu"
    prior: str = "normal"  # p(z) (the top layer's with two): N(0, I), or "vamp" (Tomczak & Welling 2018)
    pseudo_inputs: int = 500  # the VampPrior's K learned pseudo-inputs
    likelihood: str = "bernoulli"  # or "gaussian": N(x; decoder(z), likelihood_std² I), or 8-bit "logistic"/"-mixture"
    likelihood_std: float = 1.0
    mixture_components: int = 10  # logistic-mixture: K logistics per pixel (PixelCNN++)

    def __post_init__(self) -> None:
        # A single number is accepted where a tuple is expected: ModelSpec(hidden=400, latent_dims=20).
        for name in ("latent_dims", "hidden", "image_shape"):
            value = getattr(self, name)
            object.__setattr__(
                self, name, (int(value),) if isinstance(value, (int, float)) else tuple(int(v) for v in value)
            )
        if self.image_shape:
            _require(
                len(self.image_shape) == 3 and all(n >= 1 for n in self.image_shape),
                f"image_shape is (channels, height, width) (got {list(self.image_shape)})",
            )
            pixels = math.prod(self.image_shape)
            if self.input_dim == 784 and pixels != 784:  # input_dim follows the image when left at its default
                object.__setattr__(self, "input_dim", pixels)
            _require(
                self.input_dim == pixels,
                f"input_dim {self.input_dim} differs from image_shape {list(self.image_shape)} ({pixels} values)",
            )
        if len(self.hidden) == 1 and len(self.latent_dims) > 1:  # one width serves every layer
            object.__setattr__(self, "hidden", self.hidden * len(self.latent_dims))
        _require(self.input_dim >= 1, "input_dim must be >= 1")
        _require(
            1 <= len(self.latent_dims) <= MAX_LAYERS,
            f"--layers must be 1 or 2 (got {len(self.latent_dims)} latent sizes)",
        )
        _require(
            len(self.hidden) == len(self.latent_dims),
            f"--hidden needs one width per stochastic layer: {len(self.latent_dims)} (got {list(self.hidden)})",
        )
        _require(all(d >= 1 for d in self.latent_dims), f"--latent-dim must be >= 1 (got {list(self.latent_dims)})")
        _require(all(h >= 1 for h in self.hidden), f"--hidden must be >= 1 (got {list(self.hidden)})")
        _require(self.depth >= 0, f"--depth must be >= 0 (got {self.depth})")
        _require(
            self.activation in ACTIVATION_NAMES,
            f"--activation must be one of {', '.join(ACTIVATION_NAMES)} (got {self.activation!r})",
        )
        _require(self.prior in PRIORS, f"--prior must be one of {', '.join(PRIORS)} (got {self.prior!r})")
        _require(self.pseudo_inputs >= 1, f"--pseudo-inputs must be >= 1 (got {self.pseudo_inputs})")
        _require(
            self.likelihood in LIKELIHOODS,
            f"--likelihood must be one of {', '.join(LIKELIHOODS)} (got {self.likelihood!r})",
        )
        _require(
            math.isfinite(self.likelihood_std) and self.likelihood_std > 0,
            f"likelihood_std must be > 0 (got {self.likelihood_std})",
        )
        _require(self.network in NETWORKS, f"--network must be one of {', '.join(NETWORKS)} (got {self.network!r})")
        _require(
            self.network == "mlp" or self.shape is not None,
            f"--network {self.network} needs an image shape: input_dim {self.input_dim} is not a square grey image; "
            "give image_shape (C, H, W)",
        )
        _require(self.channels >= 1, f"--channels must be >= 1 (got {self.channels})")
        _require(self.mixture_components >= 1, f"--mixture-components must be >= 1 (got {self.mixture_components})")

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """The image (C, H, W) behind the flat input: image_shape, else (1, s, s) when input_dim = s², else None."""
        if self.image_shape:
            return tuple(self.image_shape)  # type: ignore[return-value]
        side = math.isqrt(self.input_dim)
        return (1, side, side) if side * side == self.input_dim else None

    @property
    def layers(self) -> int:
        """Number of stochastic layers."""
        return len(self.latent_dims)

    @property
    def latent_dim(self) -> int:
        """Dimension of the whole latent (z1, z2 concatenated with two layers)."""
        return sum(self.latent_dims)


@dataclass(frozen=True)
class ObjectiveSpec:
    """What training maximises, per image (docs/derivations.md, "Objectives").

    elbo: E_q[log p(x|z)] - KL(q || p), one sample, analytic KL where the prior has one;
    beta: the same with the KL weighted by `beta` (Higgins et al. 2017);
    iwae: L_k = log (1/k) Σ_i p(x, z_i) / q(z_i|x) (Burda et al. 2015);
    dreg: L_k with the doubly reparameterized encoder gradient (Tucker et al. 2018).
    `warmup_epochs` > 0 raises the KL weight linearly from 0 over that many epochs (elbo, beta).
    """

    name: str = "elbo"
    k: int = 1
    beta: float = 1.0
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        _require(self.name in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)} (got {self.name!r})")
        _require(self.k >= 1, f"--k must be >= 1 (got {self.k})")
        _require(
            self.name in ("iwae", "dreg") or self.k == 1,
            f"--k {self.k} applies to --objective iwae or dreg; the {self.name} objective uses one sample",
        )
        _require(math.isfinite(self.beta) and self.beta > 0, f"--beta must be a positive number (got {self.beta})")
        _require(self.name == "beta" or self.beta == 1.0, f"--beta {self.beta} needs --objective beta")
        _require(
            math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0,
            f"--warmup-epochs must be >= 0 (got {self.warmup_epochs})",
        )
        _require(
            self.name in ("elbo", "beta") or self.warmup_epochs == 0,
            f"--warmup-epochs weights the KL term, which the {self.name} objective does not have; use elbo or beta",
        )


@dataclass(frozen=True)
class TrainConfig:
    """`vaelab train`: the PyTorch VAE example's settings are the defaults."""

    dataset: str = "mnist"
    data_dir: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
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
    denormals: str = "flush"  # CPU: flush subnormal floats to zero (2-3x faster steps once weights settle) or keep
    detect_anomaly: bool = False
    autograd: bool = False  # gradients by autograd even where a kernel serves the run (vaelab.kernels)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = once per epoch
    compile: bool = False  # torch.compile the objective where autograd trains the run (no kernel serves it)
    validation_size: int = 0  # hold out the last N training images for model selection; 0 = none
    patience: int = 0  # stop after this many epochs without a better validation -ELBO; 0 = never
    lr_schedule: str = "constant"  # or "cosine": from lr down to lr_final over the run's epochs
    lr_final: float = 0.0
    max_seconds: float = 0.0  # stop after the epoch in which training time passes this; 0 = no limit
    preset: str = ""  # the --preset the run started from (vaelab.presets), recorded for the reader
    image_size: int = 0  # folder/array/idx: resize the shorter side to S and centre-crop to S x S; 0 = as stored
    test_fraction: float = 0.0  # without the user's own train/ and test/: hold out this seeded fraction as test
    data_digest: str = ""  # SHA-256 of the uint8 cache the run trained on (recorded by vaelab train)
    source_digest: str = ""  # SHA-256 over the source files it was converted from
    budget: float = 0.0  # seconds of training: the schedules run over it and the run stops where it ends; 0 = none
    budget_plan: tuple[tuple[int, int], ...] = ()  # a budget run's (step, planned steps) re-plans; replayed if given
    lr_warmup: float = 0.0  # the learning rate rises linearly from 0 over this fraction of the run
    warmup_fraction: float = 0.0  # the KL weight rises linearly from 0 over this fraction of the run (elbo, beta)

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget_plan", tuple(tuple(int(v) for v in entry) for entry in self.budget_plan))
        _require(self.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)} (got {self.dataset!r})")
        _require(self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})")
        _require(self.image_size >= 0, f"--image-size must be >= 0 (got {self.image_size})")
        _require(
            math.isfinite(self.test_fraction) and 0 <= self.test_fraction < 1,
            f"--test-fraction must be in [0, 1) (got {self.test_fraction})",
        )
        _require(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        _require(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number (got {self.lr})")
        _require(
            self.binarize in BINARIZE_MODES,
            f"--binarize must be one of {', '.join(BINARIZE_MODES)} (got {self.binarize!r})",
        )
        _require(self.train_size >= 0, f"--train-size must be >= 0 (got {self.train_size})")
        _require(self.test_size >= 0, f"--test-size must be >= 0 (got {self.test_size})")
        _require(self.threads >= 0, f"--threads must be >= 0 (got {self.threads})")
        _require(
            self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})"
        )
        _require(
            self.denormals in DENORMALS, f"--denormals must be one of {', '.join(DENORMALS)} (got {self.denormals!r})"
        )
        _require(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 (got {self.checkpoint_every})")
        _require(self.validation_size >= 0, f"--validation-size must be >= 0 (got {self.validation_size})")
        _require(self.patience >= 0, f"--patience must be >= 0 (got {self.patience})")
        _require(
            math.isfinite(self.max_seconds) and self.max_seconds >= 0,
            f"--max-seconds must be >= 0 (got {self.max_seconds})",
        )
        _require(
            self.patience == 0 or self.validation_size > 0,
            "--patience stops on the validation -ELBO: give --validation-size N too",
        )
        _require(
            self.lr_schedule in LR_SCHEDULES,
            f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)} (got {self.lr_schedule!r})",
        )
        _require(
            math.isfinite(self.lr_final) and 0 <= self.lr_final <= self.lr,
            f"--lr-final must be in [0, --lr] (got {self.lr_final})",
        )
        _require(math.isfinite(self.budget) and self.budget >= 0, f"--budget must be >= 0 seconds (got {self.budget})")
        _require(
            not (self.budget and self.max_seconds),
            "--budget lays the schedules over the time and stops at its end; --max-seconds only stops: give one",
        )
        _require(
            not self.budget or self.objective.warmup_epochs == 0,
            f"--warmup-epochs {self.objective.warmup_epochs:g} counts epochs, which a --budget run does not fix; give "
            "the KL warm-up as a fraction of the budget (--warmup-fraction 0.2) and --warmup-epochs 0",
        )
        _require(not self.budget_plan or self.budget > 0, "budget_plan is a --budget run's record; it needs budget")
        _require(
            all(len(entry) == 2 and 0 <= entry[0] < entry[1] for entry in self.budget_plan)
            and all(a[0] < b[0] for a, b in zip(self.budget_plan, self.budget_plan[1:])),
            f"budget_plan must be (step, planned steps) pairs with step < planned, steps increasing (got "
            f"{[list(entry) for entry in self.budget_plan]})",
        )
        for name, option in (("lr_warmup", "--lr-warmup"), ("warmup_fraction", "--warmup-fraction")):
            value = getattr(self, name)
            _require(
                math.isfinite(value) and 0 <= value <= 1, f"{option} is a fraction of the run in [0, 1] (got {value})"
            )
        _require(
            not (self.warmup_fraction and self.objective.warmup_epochs),
            "--warmup-fraction and --warmup-epochs both set the KL warm-up; give one",
        )
        _require(
            self.objective.name in ("elbo", "beta") or self.warmup_fraction == 0,
            f"--warmup-fraction weights the KL term, which the {self.objective.name} objective does not have; use elbo "
            "or beta",
        )
        _require(
            not (self.compile and self.detect_anomaly),
            "--compile and --detect-anomaly exclude each other: anomaly detection needs eager autograd; drop one",
        )


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
        _require(
            self.binarize in (*BINARIZE_MODES, "auto"), f"--binarize must be auto or one of {', '.join(BINARIZE_MODES)}"
        )
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
    """Rebuild `cls` from `to_dict`'s output; an unknown key or a wrong type is an error.

    Every value must have its field's declared type, strictly (vaelab.integrity.is_instance): a bool is not an
    int, a float is not an int, a list stands for a tuple; nested specs are checked the same way."""
    if not isinstance(data, dict):
        raise VaelabError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
    if cls is ModelSpec:
        data = _upgrade_model_dict(data)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise VaelabError(f"unknown {cls.__name__} key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    nested = {name for name in data if dataclasses.is_dataclass(hints[name])}
    check_schema(
        {name: value for name, value in data.items() if name not in nested},
        {name: hints[name] for name in data if name not in nested},
        where=cls.__name__,
        fix="write a value of that type in the config",
    )
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in nested:
            value = from_dict(hints[name], value)
        elif isinstance(value, list):  # JSON's arrays are the config's tuples
            value = _as_tuple(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise VaelabError(f"bad {cls.__name__}: {error}") from None


def _as_tuple(value: Any) -> Any:
    """Lists, nested at any depth, as tuples."""
    return tuple(_as_tuple(item) for item in value) if isinstance(value, list) else value


def _upgrade_model_dict(data: dict[str, Any]) -> dict[str, Any]:
    """Read a model written before ModelSpec (vaelab 0.1's ModelConfig: input_dim, hidden, latent_dim):
    it was the one-layer ReLU MLP, which is ModelSpec(hidden=(hidden,), latent_dims=(latent_dim,))."""
    if "latent_dim" not in data:
        return data
    upgraded = {key: value for key, value in data.items() if key != "latent_dim"}
    upgraded["latent_dims"] = [data["latent_dim"]]
    if isinstance(data.get("hidden"), int):
        upgraded["hidden"] = [data["hidden"]]
    return upgraded


def save_json(config: Any, path: str | Path) -> None:
    """Write a config as indented JSON."""
    atomic_write(path, json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n", what="config")


def load_json(cls: type[C], path: str | Path) -> C:
    """Read a config written by `save_json`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise VaelabError(f"cannot read config {path}: {error}") from None
    return from_dict(cls, data)
