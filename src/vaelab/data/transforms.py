"""From stored images to model inputs: uint8 pixels scaled to [0, 1], then optionally binarized.

`pixels` flattens uint8 images (N, H, W) or (N, C, H, W) into float32 (N, C*H*W) = value / 255 in
(C, H, W) order (channel first, as torchvision's ToTensor; MNIST's (N, 28, 28) gives (N, 784));
`binarize` turns those intensities into the 0/1 data a Bernoulli decoder models, by a fixed threshold
or by a fresh seeded Bernoulli draw (dynamic binarization), or leaves them.
"""

from __future__ import annotations

import torch

from vaelab.config import BINARIZE_MODES
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
