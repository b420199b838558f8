"""Arrays for pictures of a trained model: where its codes lie, and planes through the latent space.

Model and data in, plain tensors out (vaelab.plots turns them into figures, vaelab.report into a
page): the manifold of decoder means over a plane, the posterior means in that plane,
interpolations between images, draws beside means, and the per-epoch strip's store
(RUN/epoch_samples.npz). Latent maps live in the space the likelihood reads,
h = model.decoder_input(z): z itself with one stochastic layer, z1 with two. Images stay flat,
(..., P) in the model's (C, H, W) channel-first order; `Pictures.image_shape` (the model's
`spec.shape`) says how to draw them, None for inputs that are not an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.errors import VaelabError
from vaelab.io import atomic_write
from vaelab.models.base import LatentVariableModel


@torch.no_grad()
def decoder_codes(model: LatentVariableModel, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """E_q[h|x] for every image: x (N, P) -> (N, D_h), the posterior mean of the latent p(x|z) reads."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    means = [
        model.decoder_input(model.posterior(x[start : start + batch_size].to(device, dtype)).mean).cpu()
        for start in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(means)


@dataclass(frozen=True)
class Plane:
    """An orthonormal frame of the decoder's latent: h = center + Σ_j c_j directions[j].

    directions (D_h, D_h) rows sorted by the variance of the codes along them (`variances`), so
    rows 0 and 1 span the plane of largest spread; with D_h = 2 and a standard-normal prior the
    frame is the identity at the origin (the latent itself).
    """

    center: torch.Tensor  # (D_h,)
    directions: torch.Tensor  # (D_h, D_h), orthonormal rows
    variances: torch.Tensor  # (D_h,)

    def point(self, coordinates: torch.Tensor) -> torch.Tensor:
        """coordinates (..., D_h) in the frame -> h (..., D_h)."""
        return self.center + coordinates @ self.directions


def principal_plane(codes: torch.Tensor, identity: bool = False) -> Plane:
    """The principal directions of codes (N, D_h) (float64 PCA about their mean); `identity` keeps the
    latent's own axes at the origin (a 2-D latent under N(0, I)), with the codes' variances along them.
    One code has no spread: its variances are 0 (the plane is the latent's axes through it), not NaN."""
    codes = codes.double()
    dim = codes.shape[1]
    correction = 1 if codes.shape[0] > 1 else 0  # the unbiased estimate divides by N - 1, which is 0 for one code
    if identity:
        variances = codes.var(dim=0, correction=correction)
        return Plane(torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64), variances)
    center = codes.mean(dim=0)
    covariance = torch.cov((codes - center).T, correction=correction).reshape(dim, dim)
    variances, vectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(variances, descending=True)
    return Plane(center, vectors[:, order].T.contiguous(), variances[order].clamp(min=0.0))


def plane_coordinates(plane: Plane, codes: torch.Tensor, count: int = 2) -> torch.Tensor:
    """Codes h (N, D_h) -> their first `count` coordinates in the frame, (N, min(count, D_h)) float64."""
    return (codes.double() - plane.center) @ plane.directions[:count].T


# --- the manifold: decoder means over a grid in a plane of the decoder's latent --------------------

# Kingma & Welling (2013), fig. 4: a 2-D latent under N(0, I) mapped through the prior's inverse CDF
# at evenly spaced probabilities, so that each cell of the grid holds the same prior mass.
QUANTILE_PROBABILITIES = (0.05, 0.95)
# Elsewhere the grid spans ±2 standard deviations of the codes along each principal direction.
PLANE_SPAN = 2.0


def reads_standard_normal_plane(model: LatentVariableModel) -> bool:
    """Whether p(x|z) reads a 2-D latent whose prior is N(0, I): one stochastic layer, normal prior, D = 2."""
    spec = model.spec
    return spec.layers == 1 and spec.prior == "normal" and tuple(spec.latent_dims) == (2,)


def normal_quantiles(
    n: int, low: float = QUANTILE_PROBABILITIES[0], high: float = QUANTILE_PROBABILITIES[1]
) -> tuple[torch.Tensor, torch.Tensor]:
    """n evenly spaced probabilities p in [low, high] and the N(0, 1) quantiles Φ⁻¹(p): two (n,) float64."""
    probabilities = torch.linspace(low, high, n, dtype=torch.float64)
    return probabilities, torch.distributions.Normal(0.0, 1.0).icdf(probabilities)


@dataclass(frozen=True)
class Manifold:
    """Decoder means E[x|h] over a grid of h in a plane: image [i, j] sits at
    h = plane.point((across[j], down[i], 0, ...)); `down` decreases, so the top row is the largest."""

    images: torch.Tensor  # (R, C, P) decoder means
    codes: torch.Tensor  # (R, C, D_h) where each image was decoded, float64
    across: torch.Tensor  # (C,) coordinate along plane.directions[0], left to right
    down: torch.Tensor  # (R,) coordinate along plane.directions[1], top to bottom (one 0 row when D_h = 1)
    plane: Plane
    probabilities: torch.Tensor | None  # (C,) the quantile grid's probabilities; None for a principal plane


@torch.no_grad()
def decode_means(model: LatentVariableModel, h: torch.Tensor) -> torch.Tensor:
    """E[x|h]: h (..., D_h) in the decoder's latent -> (..., P) on the CPU, in the model's dtype."""
    parameter = next(model.parameters())
    return model.likelihood.mean(h.to(parameter.device, parameter.dtype)).cpu()


@torch.no_grad()
def manifold(model: LatentVariableModel, codes: torch.Tensor | None = None, n: int = 15) -> Manifold:
    """The learned manifold as an (n, n) grid of decoder means.

    A 2-D latent under N(0, I): h = (Φ⁻¹(p_j), Φ⁻¹(p_i)) at probabilities p evenly spaced in
    [0.05, 0.95] (Kingma & Welling 2013, fig. 4). Otherwise the plane through the two leading
    principal directions of `codes` (N, D_h), the test set's posterior means, over ±2 standard
    deviations along each about their mean.
    """
    if reads_standard_normal_plane(model):
        probabilities, quantiles = normal_quantiles(n)
        plane = principal_plane(codes if codes is not None else torch.zeros(2, 2), identity=True)
        across, down = quantiles, quantiles.flip(0)
    else:
        if codes is None:
            raise ValueError("a principal plane needs the codes (N, D_h) it spans")
        plane, probabilities = principal_plane(codes), None
        spread = PLANE_SPAN * plane.variances.sqrt()
        across = torch.linspace(-1.0, 1.0, n, dtype=torch.float64) * spread[0]
        if len(spread) > 1:
            down = torch.linspace(1.0, -1.0, n, dtype=torch.float64) * spread[1]
        else:  # a 1-D latent: one row
            down = torch.zeros(1, dtype=torch.float64)
    dim = plane.directions.shape[0]
    grid = torch.zeros(len(down), len(across), dim, dtype=torch.float64)  # (R, C, D_h) frame coordinates
    grid[..., 0] = across
    if dim > 1:
        grid[..., 1] = down[:, None]
    points = plane.point(grid)
    return Manifold(decode_means(model, points), points, across, down, plane, probabilities)


def scatter_plane(model: LatentVariableModel, codes: torch.Tensor) -> Plane:
    """The frame the scatter of codes (N, D_h) is drawn in: the latent's own axes when D_h <= 2, else the
    principal directions of the codes (the manifold's plane)."""
    return principal_plane(codes, identity=codes.shape[1] <= 2)


# --- interpolations between pairs of images --------------------------------------------------------


def lerp(start: torch.Tensor, end: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1 - t) a + t b: start, end (B, D), t (T,) -> (B, T, D); exact at t = 0 and t = 1."""
    t = t.to(start.dtype)[None, :, None]
    return (1 - t) * start[:, None] + t * end[:, None]


def slerp(start: torch.Tensor, end: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation about the origin (Shoemake 1985; White 2016 for generative models).

    The direction moves along the great circle, sin((1-t)Ω)/sin Ω â + sin(tΩ)/sin Ω b̂ with
    cos Ω = â·b̂, and the norm linearly, (1-t)|a| + t|b|: start, end (B, D), t (T,) -> (B, T, D).
    Nearly parallel (or opposite) directions fall back to normalising the linear path's direction.
    """
    start_norm, end_norm = start.norm(dim=-1, keepdim=True), end.norm(dim=-1, keepdim=True)  # (B, 1)
    start_unit, end_unit = start / start_norm.clamp(min=eps), end / end_norm.clamp(min=eps)
    omega = torch.acos((start_unit * end_unit).sum(dim=-1).clamp(-1.0, 1.0))[:, None, None]  # (B, 1, 1)
    sin_omega = torch.sin(omega)
    tt = t.to(start.dtype)[None, :, None]  # (1, T, 1)
    great_circle = (torch.sin((1 - tt) * omega) * start_unit[:, None] + torch.sin(tt * omega) * end_unit[:, None]) / (
        sin_omega.clamp(min=eps)
    )
    straight = lerp(start_unit, end_unit, t)
    straight = straight / straight.norm(dim=-1, keepdim=True).clamp(min=eps)
    direction = torch.where(sin_omega > eps, great_circle, straight)
    norm = lerp(start_norm, end_norm, t)  # (B, T, 1)
    return norm * direction


@dataclass(frozen=True)
class Interpolations:
    """Decoder means along paths in the decoder's latent between the codes of pairs of images."""

    starts: torch.Tensor  # (B, P) the first image of each pair, as given
    ends: torch.Tensor  # (B, P) the second
    images: torch.Tensor  # (B, T, P) E[x|h(t)]
    codes: torch.Tensor  # (B, T, D_h) h(t), float64
    t: torch.Tensor  # (T,) from 0 to 1
    spherical: bool


def interpolation_pairs(n_images: int, pairs: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (pairs, 2) of distinct images drawn with `generator` (a pair repeats an image only when
    there are fewer than 2 * pairs images)."""
    order = torch.randperm(n_images, generator=generator)
    if n_images >= 2 * pairs:
        return torch.stack((order[:pairs], order[pairs : 2 * pairs]), dim=1)
    starts = order.repeat(math.ceil(pairs / n_images))[:pairs]
    return torch.stack((starts, order.roll(-1).repeat(math.ceil(pairs / n_images))[:pairs]), dim=1)


@torch.no_grad()
def interpolations(
    model: LatentVariableModel, starts: torch.Tensor, ends: torch.Tensor, steps: int = 10, spherical: bool = False
) -> Interpolations:
    """Decode the path between E_q[h|x_a] and E_q[h|x_b] for each pair: starts, ends (B, P) -> images
    (B, steps, P), linear in h, or `spherical` (slerp about the origin)."""
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    start_codes, end_codes = decoder_codes(model, starts).double(), decoder_codes(model, ends).double()
    path = (slerp if spherical else lerp)(start_codes, end_codes, t)
    return Interpolations(starts, ends, decode_means(model, path), path, t, spherical)


# --- draws beside means ----------------------------------------------------------------------------


@torch.no_grad()
def draws_beside_means(
    model: LatentVariableModel, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """z ~ p(z), then E[x|z] and one draw x ~ p(x|z) at the same z: two (n, P) on the CPU.

    With a Bernoulli likelihood the draw is the binary image the model actually generates; the
    mean is what sample grids usually show.
    """
    h = model.decoder_input(model.sample_latent(n, generator))
    return model.likelihood.mean(h).cpu(), model.likelihood.sample(h, generator).cpu()


# --- every figure of a run, as tensors ---------------------------------------------------------------


@dataclass(frozen=True)
class Pictures:
    """What the run's figures show (vaelab.plots.write_figures draws them)."""

    manifold: Manifold
    coordinates: torch.Tensor  # (N, min(D_h, 2)) the images' posterior means in `scatter_plane`'s frame
    labels: torch.Tensor  # (N,)
    principal: bool  # coordinates along principal directions (D_h > 2), else the latent's own axes
    scatter_variances: torch.Tensor  # (D_h,) the codes' variance along each axis of the scatter's frame
    interpolations: Interpolations
    means: torch.Tensor  # (n, P) E[x|z], z ~ p(z)
    draws: torch.Tensor  # (n, P) x ~ p(x|z) at the same z
    likelihood: str  # bernoulli, gaussian, logistic or logistic-mixture
    latent_name: str  # "z", or "z1" when p(x|z) reads the first of two stochastic layers
    image_shape: tuple[int, int, int] | None  # (C, H, W) of the flat P; None: a flat vector, not an image


@torch.no_grad()
def pictures(
    model: LatentVariableModel,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    spherical: bool = False,
    grid: int = 15,
    pairs: int = 8,
    steps: int = 10,
    draws: int = 32,
) -> Pictures:
    """The arrays behind every figure of a trained model, from images x (N, P) (the model's inputs) with
    labels (N,); the pairs and the draws come from one generator seeded with `seed`."""
    was_training = model.training
    model.eval()
    try:
        codes = decoder_codes(model, x)  # (N, D_h)
        plane = scatter_plane(model, codes)
        generator = torch.Generator().manual_seed(seed)
        chosen = interpolation_pairs(x.shape[0], pairs, generator)
        paths = interpolations(model, x[chosen[:, 0]], x[chosen[:, 1]], steps, spherical)
        draw_generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        means, samples = draws_beside_means(model, draws, draw_generator)
        grid_means = manifold(model, codes, grid)
    finally:
        model.train(was_training)
    return Pictures(
        manifold=grid_means,
        coordinates=plane_coordinates(plane, codes),
        labels=labels,
        principal=codes.shape[1] > 2,
        scatter_variances=plane.variances,
        interpolations=paths,
        means=means,
        draws=samples,
        likelihood=model.spec.likelihood,
        latent_name="z" if model.spec.layers == 1 else "z1",
        image_shape=model.spec.shape,
    )


# --- the per-epoch strip: the same latent draws decoded after every epoch ----------------------------

EPOCH_SAMPLES_NAME = "epoch_samples.npz"
STRIP_SAMPLES = 10


@torch.no_grad()
def fixed_samples(model: LatentVariableModel, n: int, seed: int) -> torch.Tensor:
    """E[x|z] (n, P) on the CPU for n draws z ~ p(z) from a generator seeded with `seed` (the same z at
    every call under a fixed prior); the model's mode and the global generators are left as they were."""
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        return model.mean_image(model.sample_latent(n, generator)).float().cpu()
    finally:
        model.train(was_training)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Intensities in [0, 1] (clipped) -> uint8 0..255, rounded; any shape, (n, P) for the store."""
    return (images.float().clamp(0.0, 1.0) * 255).round().to(torch.uint8)


def square_shape(pixels: int) -> tuple[int, int, int] | None:
    """The image a flat vector of `pixels` values is taken for without a stated shape: grey (1, s, s) when
    pixels = s², else None (as ModelSpec.shape)."""
    side = math.isqrt(pixels)
    return (1, side, side) if pixels and side * side == pixels else None


def _load_epoch_samples(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int] | None]:
    if not path.is_file():
        return np.zeros((0, 0, 0), dtype=np.uint8), np.zeros(0, dtype=np.int64), None
    try:
        with np.load(path, allow_pickle=False) as saved:
            images, epochs = saved["images"], saved["epochs"].astype(np.int64)
            if "image_shape" in saved.files:  # empty: a flat vector that is not an image
                stored = tuple(int(n) for n in saved["image_shape"])
                shape = stored if len(stored) == 3 else None
            else:  # written before shapes were stored: grey squares, (1, 28, 28) for MNIST
                shape = square_shape(images.shape[-1])
    except (OSError, ValueError, KeyError) as error:
        raise VaelabError(f"cannot read {path} ({error}); delete it to start the strip afresh") from None
    if shape is not None and math.prod(shape) != images.shape[-1]:
        raise VaelabError(
            f"cannot read {path}: its image shape {list(shape)} does not hold {images.shape[-1]} values; delete it to "
            "start the strip afresh"
        )
    return images, epochs, shape


def read_epoch_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """RUN/epoch_samples.npz -> (images (E, n, P) uint8, flat in (C, H, W) order, epochs (E,) int64); empty arrays
    when absent. `epoch_samples_shape` gives the images' shape."""
    images, epochs, _ = _load_epoch_samples(Path(path))
    return images, epochs


def epoch_samples_shape(path: str | Path) -> tuple[int, int, int] | None:
    """The image shape (C, H, W) stored in RUN/epoch_samples.npz; a file without one (older runs) holds grey
    squares (1, s, s) with P = s²; None for a flat vector that is not an image, or no file."""
    return _load_epoch_samples(Path(path))[2]


def append_epoch_samples(
    path: str | Path, epoch: int, images: torch.Tensor, image_shape: tuple[int, ...] | None = None
) -> None:
    """Add one epoch's uint8 images (n, P) of `image_shape` (C, H, W) (None: `square_shape(P)`) to
    RUN/epoch_samples.npz, replacing any row of this or a later epoch (left by a run interrupted after it and
    resumed from an earlier checkpoint); written atomically, the shape beside the images."""
    row = images.numpy()[None]  # (1, n, P)
    shape = tuple(int(n) for n in image_shape) if image_shape is not None else square_shape(row.shape[-1])
    if shape is not None and math.prod(shape) != row.shape[-1]:
        raise VaelabError(f"epoch samples of {row.shape[-1]} values are not images of shape {list(shape)}")
    saved, epochs, saved_shape = _load_epoch_samples(Path(path))
    keep = epochs < epoch
    if saved.shape[1:] == row.shape[1:] and saved_shape == shape:
        stacked, epochs = np.concatenate((saved[keep], row)), np.concatenate((epochs[keep], [epoch]))
    else:  # no strip yet (or one of another shape, which cannot be continued)
        stacked, epochs = row, np.array([epoch])
    stored_shape = np.array(shape if shape is not None else (), dtype=np.int64)
    atomic_write(
        path,
        lambda file: np.savez(file, images=stacked, epochs=epochs.astype(np.int64), image_shape=stored_shape),
        what="epoch samples",
    )
