"""Figures from plain arrays. Each function returns a matplotlib Figure; the caller saves it
(`write_figures` saves the figures of a trained model, drawn from vaelab.visualize's arrays).

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so no GUI backend or
global state is involved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from vaelab.io import atomic_write


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


# --- figures of a trained model (arrays from vaelab.visualize) ---------------------------------------

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
CELL_INCHES = 0.56  # one 28-pixel image at 100 dpi is drawn 2x (56 pixels)
TICK_FONT = 7


def _grey_axes(axes: Any, mosaic: np.ndarray) -> None:
    axes.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for side in axes.spines.values():
        side.set_visible(False)


def _centres(count: int, size: int, pad: int) -> list[float]:
    """Pixel positions of the centres of `count` tiles of `size` pixels separated by `pad` in a `tile` mosaic."""
    return [pad + index * (size + pad) + (size - 1) / 2 for index in range(count)]


def manifold_grid(
    images: np.ndarray,
    across: Sequence[float],
    down: Sequence[float],
    xlabel: str,
    ylabel: str,
    title: str,
    image_shape: tuple[int, int] = (28, 28),
) -> Figure:
    """Decoder means on a grid, images (R, C, P) with image [i, j] at coordinates (across[j], down[i]);
    the ticks name those coordinates."""
    rows, columns = len(down), len(across)
    images = np.asarray(images, dtype=np.float32).reshape(rows * columns, *image_shape)
    mosaic = tile(images, columns, pad=0)
    figure = Figure(figsize=(columns * CELL_INCHES + 1.0, rows * CELL_INCHES + 1.1), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    _grey_axes(axes, mosaic)
    axes.set_xticks(_centres(columns, image_shape[1], 0), [_tick(value) for value in across], fontsize=TICK_FONT)
    axes.set_yticks(_centres(rows, image_shape[0], 0), [_tick(value) for value in down], fontsize=TICK_FONT)
    if rows == 1:
        axes.set_yticks([])
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    return figure


def _tick(value: float) -> str:
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def latent_scatter(
    coordinates: np.ndarray,
    labels: np.ndarray,
    xlabel: str,
    ylabel: str,
    title: str,
    class_names: Sequence[str] = tuple(str(digit) for digit in range(10)),
    legend_title: str = "digit",
) -> Figure:
    """Points (N, 2) coloured by label (N,) in 0..9, one colour per class (tab10), on equal axes; with one
    coordinate (N, 1) the label is the vertical axis (jittered)."""
    coordinates, labels = np.asarray(coordinates, dtype=np.float64), np.asarray(labels)
    figure = Figure(figsize=(7.2, 6.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    one_dimensional = coordinates.shape[1] == 1
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(labels))  # fixed, only to separate points
    colours = colormaps["tab10"].colors
    for label, name in enumerate(class_names):
        chosen = labels == label
        if not chosen.any():
            continue
        y = label + jitter[chosen] if one_dimensional else coordinates[chosen, 1]
        axes.scatter(coordinates[chosen, 0], y, s=6, alpha=0.6, color=colours[label], label=name, linewidths=0)
    if one_dimensional:
        axes.set_yticks(range(len(class_names)), class_names, fontsize=TICK_FONT)
    else:
        axes.set_aspect("equal", adjustable="datalim")
        legend = axes.legend(
            title=legend_title, loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=3, frameon=False
        )
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    return figure


def interpolation_rows(
    starts: np.ndarray,
    paths: np.ndarray,
    ends: np.ndarray,
    t: Sequence[float],
    title: str,
    image_shape: tuple[int, int] = (28, 28),
) -> Figure:
    """One row per pair: the first image, the decoder means along the path paths (B, T, P), the second image."""
    pairs, steps = paths.shape[:2]
    starts = np.asarray(starts, dtype=np.float32).reshape(pairs, 1, -1)
    ends = np.asarray(ends, dtype=np.float32).reshape(pairs, 1, -1)
    rows = np.concatenate((starts, np.asarray(paths, dtype=np.float32), ends), axis=1)  # (B, T + 2, P)
    columns = steps + 2
    mosaic = tile(rows.reshape(-1, *image_shape), columns, pad_value=0.5)
    figure = Figure(figsize=(columns * CELL_INCHES + 0.4, pairs * CELL_INCHES + 1.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    _grey_axes(axes, mosaic)
    names = ["image a", *(f"{value:.2g}" for value in t), "image b"]
    names[1], names[-2] = "t = 0", "t = 1"
    axes.set_xticks(_centres(columns, image_shape[1], 2), names, fontsize=TICK_FONT)
    axes.set_yticks([])
    # Lines set the images themselves apart from the decoded path between them.
    for edge in (image_shape[1] + 2, (columns - 1) * (image_shape[1] + 2)):
        axes.axvline(edge + 0.5, color="tab:orange", linewidth=1.5)
    axes.set_title(title, fontsize=10)
    return figure


def draws_beside_means(
    means: np.ndarray,
    draws: np.ndarray,
    draw_title: str,
    columns: int = 8,
    image_shape: tuple[int, int] = (28, 28),
) -> Figure:
    """Decoder means (n, P) on the left, one draw x ~ p(x|z) at each same z (n, P) on the right, same places."""
    means = np.asarray(means, dtype=np.float32).reshape(-1, *image_shape)
    draws = np.clip(np.asarray(draws, dtype=np.float32), 0.0, 1.0).reshape(-1, *image_shape)
    rows = math.ceil(len(means) / columns)
    figure = Figure(figsize=(2 * columns * 0.5 + 0.6, rows * 0.5 + 0.6), dpi=100, layout="constrained")
    for index, (images, name) in enumerate(((means, "decoder means E[x|z]"), (draws, draw_title))):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.imshow(tile(images, columns, pad_value=0.5), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes.set_axis_off()
        axes.set_title(name, fontsize=9)
    figure.suptitle("z ~ p(z); the same z in the same place on both sides", fontsize=10)
    return figure


def epoch_strip(
    images: np.ndarray, epochs: Sequence[int], max_rows: int = 30, image_shape: tuple[int, int] = (28, 28)
) -> Figure:
    """One row per epoch, images (E, n, P) in [0, 1] or uint8: the same latent draws decoded after each epoch,
    the epoch numbers on the left; with more than max_rows epochs, max_rows of them evenly spaced, the last included."""
    images, epochs = np.asarray(images), np.asarray(epochs)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255
    if len(epochs) > max_rows:
        chosen = np.unique(np.linspace(0, len(epochs) - 1, max_rows).round().astype(int))
        images, epochs = images[chosen], epochs[chosen]
    rows, columns = images.shape[:2]
    mosaic = tile(images.reshape(-1, *image_shape), columns, pad_value=0.5)
    figure = Figure(figsize=(columns * 0.5 + 0.9, rows * 0.5 + 0.7), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    _grey_axes(axes, mosaic)
    axes.set_yticks(_centres(rows, image_shape[0], 2), [str(int(epoch)) for epoch in epochs], fontsize=TICK_FONT + 1)
    axes.set_xticks([])
    axes.set_ylabel("epoch")
    axes.set_title(f"the same {columns} draws z ~ p(z), decoded after each epoch", fontsize=10)
    return figure


FIGURE_NAMES = ("manifold.png", "latent_scatter.png", "interpolations.png", "draws.png", "training_strip.png")


def write_figures(
    pictures: Any,
    out_dir: str | Path,
    *,
    strip: tuple[np.ndarray, np.ndarray] | None = None,
    split: str = "test",
    dataset: str = "mnist",
) -> list[Path]:
    """Draw a `vaelab.visualize.Pictures` (and the per-epoch strip (images (E, n, P), epochs (E,)) when it
    has rows) into out_dir as manifold.png, latent_scatter.png, interpolations.png, draws.png and
    training_strip.png, each written atomically; returns the paths written."""
    out_dir = Path(out_dir)
    latent = pictures.latent_name
    figures = {
        "manifold.png": _manifold_figure(pictures, split),
        "latent_scatter.png": _scatter_figure(pictures, split, dataset),
        "interpolations.png": _interpolation_figure(pictures, split),
        "draws.png": draws_beside_means(
            pictures.means.numpy(),
            pictures.draws.numpy(),
            f"one draw x ~ Bernoulli(E[x|{latent}])"
            if pictures.likelihood == "bernoulli"
            else f"one draw x ~ N(E[x|{latent}], σ²I), clipped to [0, 1]",
        ),
    }
    if strip is not None and len(strip[1]):
        figures["training_strip.png"] = epoch_strip(*strip)
    written = []
    for name, figure in figures.items():
        save = figure.savefig
        written.append(atomic_write(out_dir / name, lambda file: save(file, format="png"), what="figure"))
    return written


def _manifold_figure(pictures: Any, split: str) -> Figure:
    grid, latent = pictures.manifold, pictures.latent_name
    if grid.probabilities is not None:
        low, high = float(grid.probabilities[0]), float(grid.probabilities[-1])
        return manifold_grid(
            grid.images.numpy(),
            grid.across.tolist(),
            grid.down.tolist(),
            rf"$z_1 = \Phi^{{-1}}(p)$, p = {low:.2f} … {high:.2f}",
            rf"$z_2 = \Phi^{{-1}}(p)$, p = {high:.2f} … {low:.2f}",
            "decoder means E[x|z] at quantiles of the prior N(0, 1) in each coordinate\n"
            "(as Kingma & Welling 2013, fig. 4)",
        )
    deviations = grid.plane.variances.sqrt()
    ylabel = f"principal coordinate 2 (sd {deviations[1]:.2f})" if len(deviations) > 1 else ""
    return manifold_grid(
        grid.images.numpy(),
        grid.across.tolist(),
        grid.down.tolist(),
        f"principal coordinate 1 (sd {deviations[0]:.2f})",
        ylabel,
        f"decoder means E[x|{latent}] over the plane of the two leading principal directions\n"
        f"of the {split} images' posterior means, ±2 sd about their mean",
    )


def _scatter_figure(pictures: Any, split: str, dataset: str) -> Figure:
    latent, variances = pictures.latent_name, pictures.scatter_variances
    count = len(pictures.labels)
    if pictures.principal:
        shares = (variances / variances.sum()).tolist()
        xlabel = f"principal coordinate 1 ({100 * shares[0]:.0f}% of the variance)"
        ylabel = f"principal coordinate 2 ({100 * shares[1]:.0f}% of the variance)"
        where = f"\nin the plane of their two leading principal directions (of {len(variances)})"
    else:
        symbol = "z" if latent == "z" else "z^{(1)}"
        xlabel, ylabel, where = f"${symbol}_1$", f"${symbol}_2$", ""
    if pictures.coordinates.shape[1] == 1:
        ylabel = "class" if dataset == "fashion-mnist" else "digit"
    fashion = dataset == "fashion-mnist"
    return latent_scatter(
        pictures.coordinates.numpy(),
        pictures.labels.numpy(),
        xlabel,
        ylabel,
        f"posterior means E_q[{latent}|x] of {count} {split} images{where}",
        class_names=FASHION_MNIST_CLASSES if fashion else tuple(str(digit) for digit in range(10)),
        legend_title="class" if fashion else "digit",
    )


def _interpolation_figure(pictures: Any, split: str) -> Figure:
    paths, latent = pictures.interpolations, pictures.latent_name
    kind = "spherical (slerp about the origin)" if paths.spherical else "linear"
    return interpolation_rows(
        paths.starts.numpy(),
        paths.images.numpy(),
        paths.ends.numpy(),
        paths.t.tolist(),
        f"{kind} interpolation in {latent} between the posterior means of pairs of {split} images\n"
        f"(outer columns: the images; between them: decoder means E[x|{latent}(t)])",
    )
