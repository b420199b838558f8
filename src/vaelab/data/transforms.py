"""From stored images to model inputs: uint8 pixels scaled to [0, 1], then optionally binarized.

`pixels` flattens uint8 images (N, H, W) or (N, C, H, W) into float32 (N, C*H*W) = value / 255 in
(C, H, W) order (channel first, as torchvision's ToTensor; MNIST's (N, 28, 28) gives (N, 784));
`binarize` turns those intensities into the 0/1 data a Bernoulli decoder models, by a fixed threshold
or by a fresh seeded Bernoulli draw (dynamic binarization), or leaves them.
"""

from __future__ import annotations

import math

import torch

from vaelab.config import BINARIZE_MODES, ModelSpec
from vaelab.errors import VaelabError


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) -> float32 (N, C*H*W) = value / 255, flattened in (C, H, W) order.

    A slice or gather of a memory-mapped Split.images works as well: only those N images are read and converted.
    Already flat uint8 (N, P) passes through as (N, P) / 255.
    """
    if images.dtype != torch.uint8:
        raise VaelabError(f"pixels takes uint8 images, got {images.dtype}; pass Split.images")
    if images.dim() not in (2, 3, 4):
        raise VaelabError(
            f"pixels takes images (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}; pass Split.images"
        )
    return images.reshape(images.shape[0], -1).float() / 255


def binarize(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (N, 784) in [0, 1] -> none: x; threshold: 1[x > 0.5]; dynamic: a draw of Bernoulli(x)."""
    if mode == "none":
        return x
    if mode == "threshold":
        return (x > 0.5).float()
    if mode == "dynamic":
        return torch.bernoulli(x, generator=generator)
    raise VaelabError(f"unknown binarization {mode!r}; choose one of {', '.join(BINARIZE_MODES)}")


def prepare(images: torch.Tensor, spec: ModelSpec, mode: str, seed: int = 0) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) -> a model's input x (N, P) float32: value / 255 in (C, H, W) order,
    binarized by `mode` (dynamic: one Bernoulli draw seeded by `seed`, the same draw for the same seed).

    The images' shape must be the model's: a mismatch names both shapes and the --image-size that would fit.
    Float pixels (N, P) in [0, 1] are taken as already scaled (then only binarized).
    """
    if images.dtype == torch.uint8:
        if images.dim() not in (3, 4) or images.shape[0] == 0:
            what = "no images" if images.dim() and images.shape[0] == 0 else f"shape {tuple(images.shape)}"
            raise VaelabError(f"expected a non-empty stack of images (N, H, W) or (N, C, H, W), got {what}")
        shape = (1, *images.shape[1:]) if images.dim() == 3 else tuple(images.shape[1:])
        _check_shape(shape, spec)
        x = pixels(images)
    elif images.is_floating_point() and images.dim() == 2:
        if images.shape[0] == 0:
            raise VaelabError("expected a non-empty set of images, got none")
        if images.shape[1] != spec.input_dim:
            raise VaelabError(
                f"the images have {images.shape[1]} pixels each, the model takes {spec.input_dim}; "
                "prepare them as the model was trained"
            )
        if bool(((images < 0) | (images > 1)).any()):
            raise VaelabError("float pixels must lie in [0, 1]; divide uint8 images by 255 or pass them as uint8")
        x = images.float()
    else:
        raise VaelabError(
            f"expected uint8 images (N, H, W) or (N, C, H, W), or float pixels (N, P) in [0, 1]; got "
            f"{images.dtype} of shape {tuple(images.shape)}"
        )
    return binarize(x, mode, torch.Generator().manual_seed(seed))


def _check_shape(shape: tuple[int, ...], spec: ModelSpec) -> None:
    """shape (C, H, W) of one image against the model's (C, H, W); a flat model with no square shape takes any
    image of input_dim pixels."""
    expected = spec.shape
    if expected is None:
        if math.prod(shape) != spec.input_dim:
            raise VaelabError(
                f"the images are {_dims(shape)} (C x H x W) = {math.prod(shape)} pixels, the model takes "
                f"{spec.input_dim}"
            )
        return
    if tuple(shape) == tuple(expected):
        return
    fixes = []
    if expected[0] != shape[0]:
        fixes.append(f"images of {expected[0]} channel(s) (grey is 1, colour 3)")
    if tuple(expected[1:]) != tuple(shape[1:]) and expected[1] == expected[2]:
        fixes.append(f"--image-size {expected[1]} (resizes the shorter side and centre-crops)")
    raise VaelabError(
        f"the images are {_dims(shape)} (C x H x W), the model takes {_dims(expected)}"
        + (f"; use {' and '.join(fixes)}" if fixes else "")
    )


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(side) for side in shape)
