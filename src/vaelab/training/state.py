"""Everything a run carries from step to step, and its round trip through a checkpoint.

A checkpoint is a plain dict (nanoGPT's habit) holding its own config: the model and Adam,
where the run stands (epochs finished, steps into the current one), the seeded generator that
draws every batch order, binarization and noise, the state that generator had when the
current epoch began (so its permutation can be drawn again), the epoch's running loss sums,
every global generator, and the history. Resuming from it continues bit-for-bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vaelab import checkpoint
from vaelab.config import TrainConfig, to_dict
from vaelab.distributed import Distributed
from vaelab.errors import VaelabError
from vaelab.models import build_model
from vaelab.models.base import LatentVariableModel

RUNNING_TERMS = ("loss", "reconstruction", "kl")  # the running sums' entries, nats summed over images


def initial_model(config: TrainConfig) -> LatentVariableModel:
    """The run's model before any step: `config.model` initialised under `torch.manual_seed(config.seed)`."""
    torch.manual_seed(config.seed)
    return build_model(config.model)


def build_optimizer(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam as in the PyTorch VAE example; the fused kernel where the device has one (CPU and CUDA do)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))


@dataclass
class TrainState:
    """Where a run stands: `epoch` epochs finished and `step` steps into the next one."""

    model: LatentVariableModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    step: int = 0
    epoch_generator: torch.Tensor | None = None  # the generator's state when the current epoch began
    running: torch.Tensor = field(default_factory=lambda: torch.zeros(len(RUNNING_TERMS), dtype=torch.float64))
    epoch_seconds: float = 0.0  # seconds spent in the current epoch before the last checkpoint
    history: list[dict[str, float]] = field(default_factory=list)
    budget_plan: list[tuple[int, int]] = field(default_factory=list)  # a --budget run's plan so far (schedule.py)

    @classmethod
    def start(cls, config: TrainConfig, device: torch.device) -> TrainState:
        """A new run: the seeded initial model, a fresh Adam, the generator seeded with config.seed."""
        model = initial_model(config).to(device)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        running = torch.zeros(len(RUNNING_TERMS), dtype=torch.float64, device=device)
        state = cls(model, build_optimizer(model, config.lr, device), generator, running=running)
        state.epoch_generator = generator.get_state()
        return state

    @classmethod
    def resume(
        cls, config: TrainConfig, saved: dict[str, Any], device: torch.device, distributed: Distributed
    ) -> TrainState:
        """The run a checkpoint dict holds, on `device`; every global generator is restored too."""
        state = cls.start(config, device)
        try:
            state.model.load_state_dict(saved["model"])
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise VaelabError(
                f"the checkpoint holds another architecture than the config describes: {first_line}"
            ) from None
        state.optimizer.load_state_dict(saved["optimizer"])
        checkpoint.restore_rng_state(saved["rng"])
        state.history = [dict(row) for row in saved["history"]]
        state.epoch, state.step = saved["epoch"], saved["step"]
        state.epoch_generator = saved["epoch_generator"]
        state.generator.set_state(saved["generator"])
        # A mid-epoch checkpoint holds the sums of all ranks; rank 0 carries them on.
        state.running = saved["running"].to(device) * float(distributed.is_main)
        state.epoch_seconds = float(saved["epoch_seconds"])
        state.budget_plan = [tuple(entry) for entry in saved.get("budget_plan", [])]  # older checkpoints have none
        return state

    def begin_epoch(self, n_train: int) -> torch.Tensor:
        """The current epoch's permutation of the n_train images, drawn afresh or, mid-epoch, drawn again."""
        if self.step == 0:
            self.epoch_generator = self.generator.get_state()
            return torch.randperm(n_train, generator=self.generator, device=self.generator.device)
        resumed = self.generator.get_state()
        self.generator.set_state(self.epoch_generator)
        permutation = torch.randperm(n_train, generator=self.generator, device=self.generator.device)
        self.generator.set_state(resumed)
        return permutation

    def to_checkpoint(self, config: TrainConfig, running: torch.Tensor | None = None) -> dict[str, Any]:
        """The plain dict `checkpoint.save` writes; `running` overrides the sums (all ranks' total)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": to_dict(config),
            "epoch": self.epoch,
            "step": self.step,
            "generator": self.generator.get_state(),
            "epoch_generator": self.epoch_generator,
            "running": (self.running if running is None else running).cpu(),
            "epoch_seconds": self.epoch_seconds,
            "rng": checkpoint.capture_rng_state(),
            "history": self.history,
            "budget_plan": [list(entry) for entry in self.budget_plan],
        }


def epochs_since_best(history: list[dict[str, float]]) -> int:
    """Epochs since the lowest validation -ELBO in the history (0: the last epoch is the best so far).

    Read from the history itself, so a resumed run knows it without any state of its own; rows
    without a validation -ELBO (nan) never count as best.
    """
    losses = [row.get("valid_loss", math.nan) for row in history]
    finite = [index for index, loss in enumerate(losses) if math.isfinite(loss)]
    if not finite:
        return len(history)
    best = min(finite, key=lambda index: losses[index])  # the first of equal minima
    return len(history) - 1 - best
