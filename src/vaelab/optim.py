"""A deterministic minimiser shared by the maths that needs one: L-BFGS with a strong Wolfe line search."""

from __future__ import annotations

from collections.abc import Callable

import torch


def lbfgs_minimum(
    loss: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    *,
    max_iter: int,
    tolerance_grad: float,
    tolerance_change: float,
) -> torch.Tensor:
    """The point L-BFGS (history 20, strong Wolfe line search) reaches from `start` minimising the scalar loss(x);
    needs no convexity, and stops at max_iter, a gradient below tolerance_grad or a change below tolerance_change.
    Returns the point detached (it may be non-finite where loss is unbounded below: the caller judges)."""
    point = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [point],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss(point)
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(closure)
    return point.detach()
