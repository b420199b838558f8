"""Where a process stands: its device, and its rank in a torchrun job (one place for the rank helpers).

Every helper is a no-op for a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from vaelab.errors import VaelabError


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def busy_cores(sample_seconds: float = 0.25) -> float | None:
    """How many of this machine's cores other work keeps busy now: (1 - idle share) x cores over a short sample of
    /proc/stat (Linux); None where that cannot be read."""

    def times() -> list[int]:
        with open("/proc/stat") as file:
            return [int(value) for value in file.readline().split()[1:]]

    try:
        before = times()
        time.sleep(sample_seconds)
        after = times()
    except (OSError, ValueError):
        return None
    spent = [b - a for a, b in zip(before, after)]
    total = sum(spent)
    if total <= 0:
        return None
    idle = spent[3] + (spent[4] if len(spent) > 4 else 0)  # idle and iowait
    return (1 - idle / total) * (os.cpu_count() or 1)


def auto_threads(default: int) -> tuple[int, str]:
    """Threads for a CPU run that was given none: torch's `default`, less the cores other processes keep busy.

    OpenMP's threads wait for each other at every parallel region, so one thread that shares its core with a
    busy neighbour stalls the rest: two threads beside one CPU-bound process measured 12x slower a training step
    than alone, one thread 0.94x (bench/README.md, neighbour.py). -> (threads, why) for the run's log."""
    busy = busy_cores()
    if busy is None or default <= 1:
        return default, ""
    free = max(1, min(default, (os.cpu_count() or default) - round(busy)))
    if free == default:
        return default, ""
    return free, (
        f"threads: {free} of {default}, as other processes keep about {busy:.1f} cores busy (threads that share "
        "a core with them stall the rest); --threads N chooses"
    )


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """ "auto" -> the current accelerator (CUDA, MPS, ...) if there is one, else the CPU; a named device must exist
    here (a cuda:N past the last GPU, or cuda / mps on a machine without one, is an error naming those there are)."""
    if name == "auto":
        if hasattr(torch, "accelerator") and torch.accelerator.is_available():
            accelerator = torch.accelerator.current_accelerator()
            return torch.device(accelerator.type, local_rank) if accelerator.type == "cuda" else accelerator
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaelabError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type != "cpu" and (str(device) if device.type == "cuda" else device.type) not in available_devices():
        raise VaelabError(
            f"--device {name} is not on this machine (devices here: {', '.join(available_devices())}); "
            "use one of those, or --device auto"
        )
    return device


def available_devices() -> list[str]:
    """The devices this process can use: cpu, then cuda:0 ... cuda:N-1, then mps where there is one."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def setup_distributed(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size <= 1:
        return Distributed(), device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank), device


def share(batch: torch.Tensor, distributed: Distributed, dim: int = 0) -> torch.Tensor:
    """This rank's contiguous share of a global batch along `dim`: (..., B, ...) -> (..., about B / world, ...)."""
    return torch.tensor_split(batch, distributed.world_size, dim=dim)[distributed.rank]


def agree(flag: bool, distributed: Distributed, device: torch.device) -> bool:
    """True on every rank when any rank's flag is true (e.g. a stop request), so that all act at the same step."""
    if distributed.world_size == 1:
        return flag
    votes = torch.tensor([int(flag)], device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item())


def agree_max(value: float, distributed: Distributed, device: torch.device) -> float:
    """The largest of every rank's value (e.g. the slowest rank's elapsed seconds), the same on every rank."""
    if distributed.world_size == 1:
        return value
    values = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return float(values.item())


def all_reduce_sum(tensor: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    """The sum of `tensor` over ranks (a copy; the input is left alone)."""
    total = tensor.clone()
    if distributed.world_size > 1:
        dist.all_reduce(total)
    return total


def main_rank_first(make: Callable[[], Any], distributed: Distributed, *, share_value: bool = False) -> Any:
    """Run `make` on rank 0 first; if it fails there, every rank raises the same error.

    Then the other ranks either take rank 0's value (share_value=True: decisions such as the run
    directory, which must not be made twice) or run `make` themselves (share_value=False: e.g.
    reading the data set that rank 0 has just put in the cache, too big to broadcast).
    """
    if distributed.world_size == 1:
        return make()
    outcome: list[Any] = [None]
    value = None
    if distributed.is_main:
        try:
            value = make()
            outcome = [("ok", value if share_value else None)]
        except VaelabError as error:
            outcome = [("error", str(error))]
    dist.broadcast_object_list(outcome, src=0)
    status, shared = outcome[0]
    if status == "error":
        raise VaelabError(shared)
    if distributed.is_main:
        return value
    return shared if share_value else make()
