"""Figures from plain arrays. Each function returns a matplotlib Figure; the caller saves it.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so no GUI backend or
global state is involved.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure


def tile(images: np.ndarray, columns: int, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Images (n, h, w) in [0, 1] -> one (rows*(h+pad)+pad, columns*(w+pad)+pad) mosaic, row-major."""
    n, height, width = images.shape
    rows = math.ceil(n / columns)
    mosaic = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad), pad_value, dtype=np.float32)
    for index in range(n):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        mosaic[top : top + height, left : left + width] = images[index]
    return mosaic


def image_grid(
    images: np.ndarray, columns: int = 8, title: str | None = None, image_shape: tuple[int, int] = (28, 28)
) -> Figure:
    """A grid of grey images: images (n, h*w) or (n, h, w) in [0, 1], white on black as in MNIST."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, *image_shape)
    mosaic = tile(images, columns, pad_value=0.5)
    figure = Figure(
        figsize=(columns * 0.75, math.ceil(len(images) / columns) * 0.75 + (0.4 if title else 0.0)), dpi=100
    )
    axes = figure.add_axes((0, 0, 1, 1 if not title else 1 - 0.4 / figure.get_figheight()))
    axes.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10, y=0.995, va="top")
    return figure


def reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8, image_shape: tuple[int, int] = (28, 28)
) -> Figure:
    """Test images (n, P) above their reconstructions (n, P), alternating row pairs."""
    originals = np.asarray(originals, dtype=np.float32).reshape(-1, *image_shape)
    reconstructions = np.asarray(reconstructions, dtype=np.float32).reshape(-1, *image_shape)
    rows = []
    for start in range(0, len(originals), columns):
        rows.append(originals[start : start + columns])
        rows.append(reconstructions[start : start + columns])
    interleaved = np.concatenate(rows)
    return image_grid(
        interleaved,
        columns,
        title="test images (odd rows) and their reconstructions (even rows)",
        image_shape=image_shape,
    )


def loss_curves(history: Sequence[dict[str, float]], title: str = "-ELBO per image") -> Figure:
    """Train and test -ELBO (nats per image) against epoch, with the test KL on a second axis."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train -ELBO")
    axes.plot(epochs, [row["test_loss"] for row in history], marker="s", label="test -ELBO")
    axes.set_xlabel("epoch")
    axes.set_ylabel("nats per image")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    kl_axes = axes.twinx()
    kl_axes.plot(epochs, [row["test_kl"] for row in history], color="tab:green", linestyle="--", label="test KL")
    kl_axes.set_ylabel("KL(q(z|x) || p(z)), nats")
    lines = axes.get_lines() + kl_axes.get_lines()
    axes.legend(lines, [line.get_label() for line in lines], loc="upper right")
    return figure
