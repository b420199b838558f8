"""Figures from plain arrays. Each function returns a matplotlib Figure; the caller saves it
(`write_figures` saves the figures of a trained model, drawn from vaelab.visualize's arrays).

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so no GUI backend or
global state is involved.

Images arrive flat, (n, P) with P = C·H·W in channel-first order (torch's layout), and an
`image_shape` (C, H, W) with C = 1 (grey, drawn white on black with the grey colormap) or 3
(RGB); the older (H, W) means grey. Values are intensities in [0, 1] (uint8 0..255 are scaled),
clipped before drawing. A model whose inputs are not an image (ModelSpec.shape is None: a flat
vector without image_shape whose length is not a square) gets no image figures: the callers skip
them and say so (`NOT_AN_IMAGE`), and `write_figures` draws only the latent scatter.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vaelab.errors import VaelabError
from vaelab.io import atomic_write

DPI = 100
# The longer side of an image figure's mosaic, in inches (2000 pixels at DPI): more images, or larger
# ones, are drawn smaller, and shrunk by block means once an image pixel would fall below a screen pixel.
MAX_FIGURE_INCHES = 20.0
NOT_AN_IMAGE = (
    "no image figures: the model's {pixels} inputs are not an image (no image_shape (C, H, W), and {pixels} is not "
    "a square); train it with an image shape to draw them"
)


def channels_first(image_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """An image shape (C, H, W) with C = 1 or 3, or the older (H, W), meaning grey -> (C, H, W)."""
    if image_shape is None:
        raise VaelabError("these inputs are not an image (no image shape): pass image_shape (C, H, W) to draw them")
    shape = tuple(int(n) for n in image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise VaelabError(
            f"pictures draw (C, H, W) images with C = 1 (grey) or 3 (RGB), or grey (H, W) (got {list(shape)})"
        )
    return shape  # type: ignore[return-value]


def display_images(images: np.ndarray, image_shape: Sequence[int] = (1, 28, 28)) -> np.ndarray:
    """Flat images (..., C·H·W) in channel-first order (or grey (..., H, W)), in [0, 1] or uint8 -> what imshow
    draws: (n, H, W) grey or (n, H, W, 3) RGB, float32 clipped to [0, 1]."""
    channels, height, width = channels_first(image_shape)
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    if images.size % (channels * height * width):
        raise VaelabError(
            f"images of shape {list(images.shape)} do not hold whole {channels}x{height}x{width} images; pass the "
            "model's image shape"
        )
    shown = images.astype(np.float32).reshape(-1, channels, height, width) / scale
    shown = np.clip(shown.transpose(0, 2, 3, 1), 0.0, 1.0)  # (n, H, W, C)
    return shown[..., 0] if channels == 1 else shown


def tile(images: np.ndarray, columns: int, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Images (n, h, w) or (n, h, w, c) in [0, 1] -> one (rows*(h+pad)+pad, columns*(w+pad)+pad[, c]) mosaic,
    row-major."""
    n, height, width = images.shape[:3]
    rows = math.ceil(n / columns)
    shape = (rows * (height + pad) + pad, columns * (width + pad) + pad, *images.shape[3:])
    mosaic = np.full(shape, pad_value, dtype=np.float32)
    for index in range(n):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        mosaic[top : top + height, left : left + width] = images[index]
    return mosaic


def shrink(images: np.ndarray, factor: int) -> np.ndarray:
    """Block means of factor x factor pixels: images (n, h, w[, c]) -> (n, ⌈h/f⌉, ⌈w/f⌉[, c]), the last row and
    column repeated to fill a partial block."""
    if factor <= 1:
        return images
    n, height, width = images.shape[:3]
    extra = -height % factor, -width % factor
    padded = np.pad(images, [(0, 0), (0, extra[0]), (0, extra[1])] + [(0, 0)] * (images.ndim - 3), mode="edge")
    blocks = padded.reshape(n, padded.shape[1] // factor, factor, padded.shape[2] // factor, factor, *images.shape[3:])
    return blocks.mean(axis=(2, 4))


def image_cells(
    images: np.ndarray, image_shape: Sequence[int], rows: int, columns: int, cell_inches: float
) -> tuple[np.ndarray, float, float]:
    """Flat images -> (the images as drawn (n, h, w[, 3]), one cell's width and height in inches) for a mosaic of
    rows x columns cells: the longer side of a cell is cell_inches, or more so that every pixel gets one screen
    pixel at DPI; the mosaic's sides are at most MAX_FIGURE_INCHES, the images shrunk (block means) to fit."""
    shown = display_images(images, image_shape)
    height, width = shown.shape[1:3]
    longer = max(height, width)
    side = max(cell_inches, longer / DPI)
    side = min(side, MAX_FIGURE_INCHES * longer / (columns * width), MAX_FIGURE_INCHES * longer / (rows * height))
    factor = math.ceil(longer / (side * DPI) - 1e-9)  # > 1 only when the cap makes pixels smaller than the screen's
    return shrink(shown, factor), side * width / longer, side * height / longer


def _draw(axes: Any, mosaic: np.ndarray) -> None:
    """A grey mosaic (h, w) in the grey colormap on [0, 1] (white on black as in MNIST); an RGB one (h, w, 3) as is."""
    if mosaic.ndim == 2:
        axes.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axes.imshow(mosaic, interpolation="nearest")


def image_grid(
    images: np.ndarray, columns: int = 8, title: str | None = None, image_shape: Sequence[int] = (1, 28, 28)
) -> Figure:
    """A grid of images: images (n, C·H·W) (or grey (n, H, W)) in [0, 1], grey white on black as in MNIST,
    colour as RGB."""
    n = np.asarray(images).size // math.prod(channels_first(image_shape))
    rows = math.ceil(n / columns)
    shown, cell_width, cell_height = image_cells(images, image_shape, rows, columns, 0.75)
    mosaic = tile(shown, columns, pad_value=0.5)
    heading = 0.4 if title else 0.0
    figure = Figure(figsize=(columns * cell_width, rows * cell_height + heading), dpi=DPI)
    axes = figure.add_axes((0, 0, 1, 1 if not title else 1 - heading / figure.get_figheight()))
    _draw(axes, mosaic)
    axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10, y=0.995, va="top")
    return figure


def reconstruction_grid(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    columns: int = 8,
    image_shape: Sequence[int] = (1, 28, 28),
) -> Figure:
    """Test images (n, P) above their reconstructions (n, P), alternating row pairs."""
    pixels = math.prod(channels_first(image_shape))
    originals = np.asarray(originals, dtype=np.float32).reshape(-1, pixels)
    reconstructions = np.asarray(reconstructions, dtype=np.float32).reshape(-1, pixels)
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
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only, however few
    if len(set(epochs)) == 1:
        axes.set_xticks(epochs)  # one point: the locator's range would hold no whole number but its own
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


def _image_axes(axes: Any, mosaic: np.ndarray) -> None:
    _draw(axes, mosaic)
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
    image_shape: Sequence[int] = (1, 28, 28),
) -> Figure:
    """Decoder means on a grid, images (R, C, P) with image [i, j] at coordinates (across[j], down[i]);
    the ticks name those coordinates."""
    rows, columns = len(down), len(across)
    shown, cell_width, cell_height = image_cells(images, image_shape, rows, columns, CELL_INCHES)
    mosaic = tile(shown, columns, pad=0)
    figure = Figure(figsize=(columns * cell_width + 1.0, rows * cell_height + 1.1), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    _image_axes(axes, mosaic)
    height, width = shown.shape[1:3]
    axes.set_xticks(_centres(columns, width, 0), [_tick(value) for value in across], fontsize=TICK_FONT)
    axes.set_yticks(_centres(rows, height, 0), [_tick(value) for value in down], fontsize=TICK_FONT)
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
    """Points (N, 2) coloured by label (N,) in 0..len(class_names)-1, one colour per class (tab10, repeating past
    ten), on equal axes; with one coordinate (N, 1) the label is the vertical axis (jittered)."""
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
        axes.scatter(
            coordinates[chosen, 0], y, s=6, alpha=0.6, color=colours[label % len(colours)], label=name, linewidths=0
        )
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
    image_shape: Sequence[int] = (1, 28, 28),
) -> Figure:
    """One row per pair: the first image, the decoder means along the path paths (B, T, P), the second image."""
    pairs, steps = paths.shape[:2]
    starts = np.asarray(starts, dtype=np.float32).reshape(pairs, 1, -1)
    ends = np.asarray(ends, dtype=np.float32).reshape(pairs, 1, -1)
    rows = np.concatenate((starts, np.asarray(paths, dtype=np.float32).reshape(pairs, steps, -1), ends), axis=1)
    columns = steps + 2  # rows: (B, T + 2, P)
    shown, cell_width, cell_height = image_cells(rows, image_shape, pairs, columns, CELL_INCHES)
    mosaic = tile(shown, columns, pad_value=0.5)
    figure = Figure(figsize=(columns * cell_width + 0.4, pairs * cell_height + 1.0), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    _image_axes(axes, mosaic)
    width = shown.shape[2]
    names = ["image a", *(f"{value:.2g}" for value in t), "image b"]
    names[1], names[-2] = "t = 0", "t = 1"
    axes.set_xticks(_centres(columns, width, 2), names, fontsize=TICK_FONT)
    axes.set_yticks([])
    # Lines set the images themselves apart from the decoded path between them.
    for edge in (width + 2, (columns - 1) * (width + 2)):
        axes.axvline(edge + 0.5, color="tab:orange", linewidth=1.5)
    axes.set_title(title, fontsize=10)
    return figure


def draws_beside_means(
    means: np.ndarray,
    draws: np.ndarray,
    draw_title: str,
    columns: int = 8,
    image_shape: Sequence[int] = (1, 28, 28),
) -> Figure:
    """Decoder means (n, P) on the left, one draw x ~ p(x|z) at each same z (n, P) on the right, same places."""
    n = np.asarray(means).size // math.prod(channels_first(image_shape))
    rows = math.ceil(n / columns)
    shown_means, cell_width, cell_height = image_cells(means, image_shape, rows, 2 * columns, 0.5)
    shown_draws, _, _ = image_cells(draws, image_shape, rows, 2 * columns, 0.5)
    figure = Figure(figsize=(2 * columns * cell_width + 0.6, rows * cell_height + 0.6), dpi=DPI, layout="constrained")
    for index, (images, name) in enumerate(((shown_means, "decoder means E[x|z]"), (shown_draws, draw_title))):
        axes = figure.add_subplot(1, 2, index + 1)
        _draw(axes, tile(images, columns, pad_value=0.5))
        axes.set_axis_off()
        axes.set_title(name, fontsize=9)
    figure.suptitle("z ~ p(z); the same z in the same place on both sides", fontsize=10)
    return figure


def epoch_strip(
    images: np.ndarray, epochs: Sequence[int], max_rows: int = 30, image_shape: Sequence[int] = (1, 28, 28)
) -> Figure:
    """One row per epoch, images (E, n, P) in [0, 1] or uint8: the same latent draws decoded after each epoch,
    the epoch numbers on the left; with more than max_rows epochs, max_rows of them evenly spaced, the last included."""
    images, epochs = np.asarray(images), np.asarray(epochs)
    if len(epochs) > max_rows:
        chosen = np.unique(np.linspace(0, len(epochs) - 1, max_rows).round().astype(int))
        images, epochs = images[chosen], epochs[chosen]
    rows, columns = images.shape[:2]
    shown, cell_width, cell_height = image_cells(images, image_shape, rows, columns, 0.5)
    mosaic = tile(shown, columns, pad_value=0.5)
    figure = Figure(figsize=(columns * cell_width + 0.9, rows * cell_height + 0.7), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    _image_axes(axes, mosaic)
    height = shown.shape[1]
    axes.set_yticks(_centres(rows, height, 2), [str(int(epoch)) for epoch in epochs], fontsize=TICK_FONT + 1)
    axes.set_xticks([])
    axes.set_ylabel("epoch")
    axes.set_title(f"the same {columns} draws z ~ p(z), decoded after each epoch", fontsize=10)
    return figure


FIGURE_NAMES = ("manifold.png", "latent_scatter.png", "interpolations.png", "draws.png", "training_strip.png")


def detection_figure(
    scores_in: np.ndarray,
    scores_out: np.ndarray | None,
    threshold: float,
    roc: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
    names: tuple[str, str] = ("in-distribution", "out-of-distribution"),
) -> Figure:
    """A detector's scores: the two histograms (in, and out if given) with the threshold; beside them the ROC
    curve (false-positive rate, true-positive rate) when `roc` is given."""
    panels = 2 if roc is not None else 1
    figure = Figure(figsize=(5.0 * panels, 3.6), dpi=DPI)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    finite = [np.asarray(s, np.float64) for s in (scores_in, scores_out) if s is not None]
    values = np.concatenate([s[np.isfinite(s)] for s in finite])
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1.0, 50)
    for scores, name, colour in zip(finite, names, ("tab:blue", "tab:red")):
        axes[0].hist(scores[np.isfinite(scores)], bins=bins, alpha=0.55, color=colour, label=f"{name} ({scores.size})")
    axes[0].axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    axes[0].set_xlabel("score (higher = more anomalous)")
    axes[0].set_ylabel("images")
    axes[0].legend(fontsize=8)
    if roc is not None:
        fpr, tpr = roc
        axes[1].plot(fpr, tpr, color="tab:red")
        axes[1].plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        axes[1].set_xlabel("false-positive rate")
        axes[1].set_ylabel("true-positive rate")
        axes[1].set_xlim(0, 1)
        axes[1].set_ylim(0, 1.01)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


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
    training_strip.png, each written atomically, the images in `pictures.image_shape` (C, H, W); returns the
    paths written. Inputs that are not an image (image_shape None) get latent_scatter.png alone."""
    out_dir = Path(out_dir)
    shape = pictures.image_shape
    figures = {"latent_scatter.png": _scatter_figure(pictures, split, dataset)}
    if shape is not None:
        figures = {
            "manifold.png": _manifold_figure(pictures, split),
            **figures,
            "interpolations.png": _interpolation_figure(pictures, split),
            "draws.png": draws_beside_means(
                pictures.means.numpy(),
                pictures.draws.numpy(),
                _draw_title(pictures.likelihood, pictures.latent_name),
                image_shape=shape,
            ),
        }
        if strip is not None and len(strip[1]):
            figures["training_strip.png"] = epoch_strip(*strip, image_shape=shape)
    return [save_png(figure, out_dir / name) for name, figure in figures.items()]


def save_png(figure: Figure, path: Path) -> Path:
    """Write the figure as a PNG at `path` atomically (vaelab.io.atomic_write); -> path."""
    return atomic_write(path, lambda file: figure.savefig(file, format="png"), what="figure")


def _draw_title(likelihood: str, latent: str) -> str:
    if likelihood == "bernoulli":
        return f"one draw x ~ Bernoulli(E[x|{latent}])"
    if likelihood == "gaussian":
        return f"one draw x ~ N(E[x|{latent}], σ²I), clipped to [0, 1]"
    mixture = " mixture" if likelihood == "logistic-mixture" else ""
    return f"one draw x ~ p(x|{latent}), a discretized logistic{mixture} on 256 levels"


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
            image_shape=pictures.image_shape,
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
        image_shape=pictures.image_shape,
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
    labels = pictures.labels.numpy()
    if dataset == "fashion-mnist":
        names, legend_title = FASHION_MNIST_CLASSES, "class"
    elif dataset in ("mnist", "idx"):
        names, legend_title = tuple(str(digit) for digit in range(10)), "digit"
    else:  # a folder's or an array's classes, numbered
        names, legend_title = tuple(str(label) for label in range(int(labels.max(initial=0)) + 1)), "class"
    if pictures.coordinates.shape[1] == 1:
        ylabel = legend_title
    return latent_scatter(
        pictures.coordinates.numpy(),
        labels,
        xlabel,
        ylabel,
        f"posterior means E_q[{latent}|x] of {count} {split} images{where}",
        class_names=names,
        legend_title=legend_title,
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
        image_shape=pictures.image_shape,
    )
