"""What every part of `vaelab.laplace` shares: the float64 dtype in which every estimate is computed,
log 2π, and the check that a scale such as M, N or a quadrature width is a positive, finite number.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vaelab.errors import VaelabError

__all__ = ["DTYPE", "LOG_2PI"]

DTYPE = torch.float64
LOG_2PI = math.log(2.0 * math.pi)


def _positive_finite(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise VaelabError(f"{name} must be a positive number (got {value!r})") from None
    if not (math.isfinite(number) and number > 0):
        raise VaelabError(f"{name} must be positive and finite (got {value!r})")
    return number
