"""What the report's live latent explorer needs, as JSON-ready values: the decoder and the plane it is driven on.

The page decodes in JavaScript, so the decoder travels as data: a program of plain ops (linear,
3x3 convolution, activation, reshape, nearest upsampling, residual block) whose weights are base64
of little-endian float32, and the likelihood whose mean E[x|h] the parameters give (sigmoid for
Bernoulli means, identity for a Gaussian mean, the exact mean of the discretized logistic and its
mixture's mean as `vaelab.distributions` computes them). The plane is the decoder's
latent h itself when that is 2-D under N(0, I); otherwise the plane of the two leading principal
directions of the test set's posterior means, the remaining directions being sliders. A run trained through the
Python API left no record of its data, so draws of h from the prior stand in for the test set's codes there.
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
from vaelab.distributions import LOG_SCALE_MIN
from vaelab.models.base import LatentVariableModel
from vaelab.nn import ACTIVATIONS, MLP, ConvDecoder, ResidualCell, UpsamplingConv2d
from vaelab.visualize import Plane, decoder_codes, principal_plane

EXPLORER_IMAGES = 5000  # test images whose posterior means define the plane and dot it
PRIOR_DRAWS = 2000  # draws of h from the prior that stand in for them where the run's test images are unknown
PRIOR_EXTENT = 3.0  # the identity plane spans ±3 prior standard deviations
SPREAD_EXTENT = 3.0  # a principal plane spans ±3 standard deviations of the codes along its first direction
# the likelihoods whose E[x|h] the page's script computes from the decoder's parameters
LIKELIHOOD_MEANS = ("bernoulli", "gaussian", "logistic", "logistic-mixture")


def float32_base64(array: torch.Tensor | np.ndarray) -> str:
    """Any real array -> base64 of its values as little-endian float32, in C (row-major) order."""
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def decoder_weights(model: LatentVariableModel) -> dict[str, Any]:
    """The decoder h (D_h,) -> the likelihood's parameters (M·S,) as a program of plain ops, and how E[x|h] follows.

    ops, applied in order to one tensor: {"op": "linear", "shape": [out, in], "weight", "bias"};
    {"op": "conv2d", "shape": [out, in, kh, kw], "stride": [sh, sw], "padding": [ph, pw], "weight", "bias"}
    (zero padding); {"op": "act", "name"} (a name of vaelab.nn.ACTIVATIONS, torch's defaults);
    {"op": "reshape", "shape": [C, H, W]}; {"op": "upsample", "size": [H, W]} (nearest: output index i reads
    floor(i · in/out) in float32, as torch does); {"op": "residual", "ops": [...]} (x + ops(x)). weight and bias are
    float32_base64 of the torch tensors, in their (C-order) layout. The likelihood's kind, the image's channels C,
    positions S = H·W and mixture components K say how the (M, S) parameters give E[x|h] (vaelab.models.base).
    """
    shape = model.spec.shape or (1, 1, model.spec.input_dim)
    if model.likelihood.kind not in LIKELIHOOD_MEANS:
        raise VaelabError(
            f"the report's explorer shows the means of the {', '.join(LIKELIHOOD_MEANS)} likelihoods, not of "
            f"{model.likelihood.kind!r}; report on a model with one of those"
        )
    return {
        "ops": _ops(model.likelihood.decoder),
        "likelihood": model.likelihood.kind,
        "channels": shape[0],
        "positions": shape[1] * shape[2],
        "components": getattr(model.likelihood, "components", 1),
        "log_scale_min": LOG_SCALE_MIN,
    }


# torch's default settings of each activation, the only ones the page's script implements
_ACTIVATION_DEFAULTS = {
    "elu": {"alpha": 1.0},
    "softplus": {"beta": 1.0, "threshold": 20.0},
    "gelu": {"approximate": "none"},
}


def _ops(module: nn.Module) -> list[dict[str, Any]]:
    """The ops of one of vaelab's decoder modules, in the order its forward applies them."""
    if isinstance(module, nn.Sequential):
        return [op for child in module for op in _ops(child)]
    if isinstance(module, MLP):
        return _ops(module.trunk) + _ops(module.head)
    if isinstance(module, ConvDecoder):
        return _ops(module.stem) + _ops(module.trunk) + _ops(module.head)
    if isinstance(module, ResidualCell):
        inner = [module.act1, module.conv1, module.act2, module.conv2]
        return [{"op": "residual", "ops": [op for child in inner for op in _ops(child)]}]
    if type(module) is nn.Linear:
        return [{"op": "linear", "shape": list(module.weight.shape), **_weights(module)}]
    if type(module) is nn.Identity:
        return []
    if type(module) is UpsamplingConv2d:  # the function it computes: upsample, then its 3x3 convolution
        return [{"op": "upsample", "size": list(module.size)}, _conv2d_op(module)]
    if (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        return [_conv2d_op(module)]
    if type(module) is nn.Unflatten and module.dim in (1, -2) and len(module.unflattened_size) == 3:
        return [{"op": "reshape", "shape": list(module.unflattened_size)}]
    if type(module) is nn.Upsample and module.mode == "nearest" and module.size is not None:
        size = module.size if isinstance(module.size, tuple) else (module.size, module.size)
        return [{"op": "upsample", "size": list(size)}]
    for name, kind in ACTIVATIONS.items():
        settings = _ACTIVATION_DEFAULTS.get(name, {})
        if type(module) is kind and all(getattr(module, key) == value for key, value in settings.items()):
            return [{"op": "act", "name": name}]
    raise VaelabError(
        "the report's explorer runs the MLP and convolutional decoders vaelab builds, but this decoder holds "
        f"{type(module).__name__}({module.extra_repr()}); report on a model built by vaelab.models.build_model"
    )


def _conv2d_op(module: nn.Conv2d) -> dict[str, Any]:
    return {
        "op": "conv2d",
        "shape": list(module.weight.shape),
        "stride": list(module.stride),
        "padding": list(module.padding),
        **_weights(module),
    }


def _weights(module: nn.Linear | nn.Conv2d) -> dict[str, str]:
    bias = module.bias if module.bias is not None else torch.zeros(module.weight.shape[0])
    return {"weight": float32_base64(module.weight), "bias": float32_base64(bias)}


def explorer_codes(model: LatentVariableModel, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first EXPLORER_IMAGES test images (within the run's --test-size), binarized as the run was
    trained -> their posterior means h (N, D_h) and labels (N,)."""
    dataset = data.load_run_dataset(config)
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


@torch.no_grad()
def prior_codes(model: LatentVariableModel, n: int = PRIOR_DRAWS, seed: int = 0) -> torch.Tensor:
    """n draws of the decoder's latent h = decoder_input(z), z ~ p(z): (n, D_h) (a run whose data are unknown)."""
    return model.decoder_input(model.sample_latent(n, torch.Generator().manual_seed(seed)))


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


def explorer_data(model: LatentVariableModel, config: TrainConfig, source: str = "test") -> dict[str, Any]:
    """Everything the page's explorer script reads (vaelab.report.assets.EXPLORER_JS), JSON-ready.

    plane: h = center + Σ_j c_j directions[j] with directions (D_h, D_h) orthonormal rows; the pointer
    sets (c_0, c_1), sliders the rest. points: the codes' (c_0, c_1), (N, 2), with their labels. The codes of
    source "test" are the posterior means of the run's test images (explorer_codes), of "prior" draws of h from the
    prior (prior_codes; no labels).
    """
    model = model.cpu().float().eval()
    if source == "test":
        codes, labels = explorer_codes(model, config)  # (N, D_h), (N,)
    elif source == "prior":
        codes, labels = prior_codes(model), None
    else:
        raise ValueError(f"source must be 'test' or 'prior', got {source!r}")
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
        "image_shape": list(model.spec.shape or (1, 1, model.spec.input_dim)),  # (C, H, W)
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
            "labels": [int(label) for label in labels] if labels is not None else None,
            "source": source,
        },
    }
