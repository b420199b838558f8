"""The training loop's guards: input checks before anything runs, stop signals, the finite-loss check."""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any

import torch

from vaelab.config import DISCRETE_LIKELIHOODS, TrainConfig
from vaelab.distributed import Distributed, agree
from vaelab.errors import VaelabError


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop reads after each step (a second SIGINT aborts)."""

    # torchrun forwards the Ctrl-C that its workers already got from the terminal: a SIGINT this
    # soon after the first is the same key press, not a second one.
    REPEAT_AFTER_S = 1.0

    def __init__(self) -> None:
        self.requested = False
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested, self._first_at = True, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._first_at > self.REPEAT_AFTER_S:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class FiniteCheck:
    """Stops every rank, before the update, when a loss since the last check was not finite.

    One read of the epoch's running sums, which any NaN or infinity since the epoch began turns
    non-finite; `unchecked_from` is the first step whose loss has not been read yet.
    """

    def __init__(self, running: torch.Tensor, distributed: Distributed, device: torch.device, first_step: int) -> None:
        self.running, self.distributed, self.device = running, distributed, device
        self.unchecked_from = first_step

    def __call__(self, epoch: int, step: int, indices: torch.Tensor) -> None:
        total = self.running.sum().item()
        if agree(not math.isfinite(total), self.distributed, self.device):
            if self.unchecked_from == step:
                where = f"step {step} (images {indices[:4].tolist()}...)"
            else:
                where = f"one of steps {self.unchecked_from}-{step}"
            raise VaelabError(
                f"non-finite loss ({total if not math.isfinite(total) else 'on another rank'}) at epoch {epoch}, "
                f"{where}; "
                f"the last good checkpoint, if any, is kept; try a lower --lr or --detect-anomaly to find the operation"
            )
        self.unchecked_from = step + 1


def check_inputs(config: TrainConfig, train_x: torch.Tensor, test_x: torch.Tensor) -> None:
    """Refuse data this run cannot use: a batch larger than train_x (N, P), P unlike the model's, pixels outside [0,
    1]."""
    n_train = train_x.shape[0]
    if config.batch_size > n_train:
        raise VaelabError(
            f"--batch-size {config.batch_size} exceeds the {n_train} training images; use a smaller batch"
        )
    pixels = math.prod(train_x.shape[1:])
    if pixels != config.model.input_dim:
        raise VaelabError(f"the data has {pixels} pixels per image but the model expects {config.model.input_dim}")
    if train_x.dtype == torch.uint8:  # 8-bit images as stored: in range, and on the 256 levels, by type
        return
    if config.model.likelihood in ("bernoulli", *DISCRETE_LIKELIHOODS):
        check_pixels(train_x, "training")
        check_pixels(test_x, "test")
    if config.model.likelihood in DISCRETE_LIKELIHOODS and config.binarize == "none":
        check_levels(train_x, "training")
        check_levels(test_x, "test")


def check_levels(x: torch.Tensor, name: str) -> None:
    """An 8-bit likelihood is a pmf over the levels v / 255: pixels (N, P) must lie on them."""
    if x.numel() == 0:
        return
    offset = (x * 255 - torch.round(x * 255)).abs()  # (N, P)
    if float(offset.max()) > 1e-3:
        image = int((offset > 1e-3).any(dim=1).nonzero()[0])
        raise VaelabError(
            f"{name} image {image} has pixels between the 256 levels v/255 that the --likelihood "
            "logistic/logistic-mixture pmf is defined on; pass uint8 images (or round to v/255), or use bernoulli"
        )


def check_pixels(x: torch.Tensor, name: str) -> None:
    """Pixels (N, P) are Bernoulli means, the targets of the cross-entropy: finite and in [0, 1]."""
    if x.numel() == 0:
        return
    low, high = x.aminmax()  # NaN propagates into both
    if low >= 0 and high <= 1:
        return
    outside = ~((x >= 0) & (x <= 1))  # (N, P); True for NaN too
    image = int(outside.any(dim=1).nonzero()[0])
    value = x[image][outside[image]][0].item()
    raise VaelabError(
        f"{name} image {image} has a pixel value {value} outside [0, 1]; pixels are Bernoulli means: "
        f"scale them to [0, 1] (0..255 / 255) and remove NaNs"
    )
