"""What the report's live latent explorer needs, as JSON-ready values: the decoder and the plane it is driven on.

The page decodes in JavaScript, so the decoder travels as data: each Linear layer's weight (out, in)
and bias (out,) as base64 of little-endian float32, with its shape, the trunk's activation and the
output link (sigmoid for Bernoulli means, identity for a Gaussian mean). The plane is the decoder's
latent h itself when that is 2-D under N(0, I); otherwise the plane of the two leading principal
directions of the test set's posterior means, the remaining directions being sliders.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from vaelab import data
from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.models.base import LatentVariableModel
from vaelab.nn import ACTIVATIONS
from vaelab.visualize import Plane, decoder_codes, principal_plane

EXPLORER_IMAGES = 5000  # test images whose posterior means define the plane and dot it
PRIOR_EXTENT = 3.0  # the identity plane spans ±3 prior standard deviations
SPREAD_EXTENT = 3.0  # a principal plane spans ±3 standard deviations of the codes along its first direction


def float32_base64(array: torch.Tensor | np.ndarray) -> str:
    """Any real array -> base64 of its values as little-endian float32, in C (row-major) order."""
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def decoder_weights(model: LatentVariableModel) -> dict[str, Any]:
    """The decoder MLP h (D_h,) -> Linear, activation, ..., Linear -> link -> E[x|h] (P,) as plain data."""
    decoder = model.likelihood.decoder
    linears = [module for module in decoder.trunk if isinstance(module, nn.Linear)] + [decoder.head]
    activations = {
        name for module in decoder.trunk for name, kind in ACTIVATIONS.items() if type(module) is kind
    }  # the trunk holds one activation type
    others = [module for module in decoder.trunk if not isinstance(module, (nn.Linear, *ACTIVATIONS.values()))]
    if others or len(activations) > 1:
        raise VaelabError(
            f"the report's explorer decodes MLPs of Linear layers and one activation of {', '.join(ACTIVATIONS)}; "
            f"this decoder has {', '.join(sorted({type(m).__name__ for m in others}) or sorted(activations))}; "
            "report on a model built by vaelab"
        )
    kind = model.likelihood.kind
    return {
        "activation": activations.pop() if activations else "relu",  # no trunk: one linear map
        "output": "sigmoid" if kind == "bernoulli" else "identity",
        "layers": [
            {
                "shape": list(linear.weight.shape),  # (out, in)
                "weight": float32_base64(linear.weight),
                "bias": float32_base64(linear.bias),
            }
            for linear in linears
        ],
    }


def explorer_codes(model: LatentVariableModel, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first EXPLORER_IMAGES test images (within the run's --test-size), binarized as the run was
    trained -> their posterior means h (N, D_h) and labels (N,)."""
    dataset = data.load_dataset(config.dataset, config.data_dir)
    count = min(EXPLORER_IMAGES, config.test_size or EXPLORER_IMAGES, dataset.test.images.shape[0])
    # training draws its dynamically binarized test set with seed + 1 (vaelab.training.loop)
    x = data.binarize(
        data.pixels(dataset.test.images[:count]), config.binarize, torch.Generator().manual_seed(config.seed + 1)
    )
    if x.shape[1] != model.spec.input_dim:
        raise VaelabError(
            f"the model reads {model.spec.input_dim} pixels but {config.dataset}'s images have {x.shape[1]}; "
            "report on the run directory the model was trained in"
        )
    return decoder_codes(model, x), dataset.test.labels[:count]


def is_prior_plane(model: LatentVariableModel) -> bool:
    """True when the decoder's latent is 2-D and is z itself under N(0, I): the latent is the plane."""
    spec = model.spec
    return spec.layers == 1 and spec.prior == "normal" and spec.latent_dims[0] == 2


def plane_extents(plane: Plane, identity: bool) -> tuple[float, list[float]]:
    """Half-widths of the square plane view and of each coordinate's slider range, in units of h."""
    sigmas = [math.sqrt(float(variance)) for variance in plane.variances]
    if identity:
        view = PRIOR_EXTENT
    else:
        view = SPREAD_EXTENT * sigmas[0] if sigmas[0] > 1e-6 else PRIOR_EXTENT  # collapsed codes: prior scale
    # an inactive direction (no spread) still gets a range, so the decoder's indifference can be seen
    return view, [max(SPREAD_EXTENT * sigma, 0.1 * view) for sigma in sigmas]


def explorer_data(model: LatentVariableModel, config: TrainConfig) -> dict[str, Any]:
    """Everything the page's explorer script reads (vaelab.report.assets.EXPLORER_JS), JSON-ready.

    plane: h = center + Σ_j c_j directions[j] with directions (D_h, D_h) orthonormal rows; the pointer
    sets (c_0, c_1), sliders the rest. points: the test codes' (c_0, c_1), (N, 2), with their labels.
    """
    model = model.cpu().float().eval()
    codes, labels = explorer_codes(model, config)  # (N, D_h), (N,)
    identity = is_prior_plane(model)
    plane = principal_plane(codes, identity=identity)
    dim = plane.directions.shape[0]
    coordinates = (codes.double() - plane.center) @ plane.directions[:2].T  # (N, min(D_h, 2))
    coordinates = nn.functional.pad(coordinates, (0, 2 - coordinates.shape[1]))  # a 1-D latent: v = 0
    view, ranges = plane_extents(plane, identity)
    total = float(plane.variances.sum())
    if identity:
        names = ["z₁", "z₂"]
    else:
        names = [f"PC {j + 1}" for j in range(dim)]
    return {
        "decoder": decoder_weights(model),
        "image_shape": _image_shape(model.spec.input_dim),
        "plane": {
            "kind": "latent" if identity else "principal",
            "dim": dim,
            "center": float32_base64(plane.center),
            "directions": float32_base64(plane.directions),
            "sigmas": [math.sqrt(float(v)) for v in plane.variances],
            "variance_shares": [float(v) / total if total > 0 else 0.0 for v in plane.variances],
            "names": names,
            "view_extent": view,
            "ranges": ranges,
        },
        "points": {
            "count": int(codes.shape[0]),
            "coordinates": float32_base64(coordinates),
            "labels": [int(label) for label in labels],
        },
    }


def _image_shape(pixels: int) -> list[int]:
    side = math.isqrt(pixels)
    return [side, side] if side * side == pixels else [1, pixels]
