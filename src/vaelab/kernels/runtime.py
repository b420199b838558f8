"""What a kernel may depend on besides the model and the objective: how the run is executed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    """How a training run executes: processes, autograd wishes, precision and device type."""

    world_size: int = 1
    autograd: bool = False  # the user asked for autograd's gradient (the reference path)
    detect_anomaly: bool = False
    precision: str = "fp32"
    device_type: str = "cpu"
