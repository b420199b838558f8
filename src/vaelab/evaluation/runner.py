"""The per-image runner every use of a trained model goes through (evaluate, score, encode, reconstruct, detect).

A pass over N images is cut into shards of consecutive images; each shard's values depend on that shard
alone (noise is drawn by image index), so shards are computed apart (a kill and a rerun, torchrun's ranks)
and merged into the single pass's result. Finished shards are files under one directory, each holding

    {"fingerprint": F, "sha256": digest of its values, "values": {name: tensor}}

F hashes everything that moves a value: the checkpoint's bytes, the digest of the images actually
computed on (after binarization), the verb and its settings, the shard size and torch's version. A shard
of another F is never read (another directory is used); a shard whose values no longer match its digest
is computed again, and said so, when the run starts, and refused if it changes between its check and the
merge. Values whose name starts with "seconds_" or is in COUNTS are summed over shards; every other value
is per image, (n, ...), and concatenated in image order.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from vaelab.errors import VaelabError
from vaelab.integrity import sha256_tensors
from vaelab.io import atomic_write
from vaelab.models.base import LatentVariableModel

COUNTS = ("unconverged", "indefinite")  # per-shard counts, summed like the seconds

ShardFunction = Callable[[LatentVariableModel, torch.Tensor, int], dict[str, torch.Tensor]]


def shard_ranges(n_images: int, shard_images: int) -> list[range]:
    """[0, n) cut into consecutive ranges of shard_images (the last may be shorter)."""
    if shard_images < 1:
        raise VaelabError(f"--shard-images must be >= 1 (got {shard_images})")
    return [range(start, min(start + shard_images, n_images)) for start in range(0, n_images, shard_images)]


def is_total(name: str) -> bool:
    """Whether a shard value is summed over shards (wall times, counts) rather than per image."""
    return name.startswith("seconds_") or name in COUNTS


def merge_shards(shards: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The shards' values in order: per-image values concatenated along images, seconds and counts summed."""
    merged: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        parts = [shard[name] for shard in shards]
        merged[name] = torch.stack(parts).sum(dim=0) if is_total(name) else torch.cat(parts)
    return merged


def fingerprint(checkpoint_sha256: str, images_sha256: str, settings: Mapping[str, Any], shard_images: int) -> str:
    """SHA-256 (hex) of what a pass's shards are computed for: the checkpoint's bytes, the images computed on,
    the verb's settings (JSON-ready), the shard size and torch's version."""
    identity = {
        "checkpoint_sha256": checkpoint_sha256,
        "images_sha256": images_sha256,
        "settings": dict(settings),
        "shard_images": shard_images,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def images_sha256(x: torch.Tensor) -> str:
    """Digest of a pass's inputs x (N, P) as computed on (after binarization): a changed image changes it."""
    return sha256_tensors({"x": x})


class ShardStore:
    """Finished shards as files DIR/shard-<first>-<stop>.pt, written atomically (a kill leaves whole shards or
    none), each with the pass's fingerprint and its values' digest inside."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory, self.fingerprint = Path(directory), fingerprint

    def path(self, shard: range) -> Path:
        return self.directory / f"shard-{shard.start:09d}-{shard.stop:09d}.pt"

    def state(self, shard: range) -> str:
        """ "done" (a sound shard of this pass), "missing" (no file, or an unreadable or foreign one: a kill
        mid-write leaves none, so this is a shard to compute) or "damaged" (its values fail their digest)."""
        try:
            self.load(shard)
        except ShardDamaged:
            return "damaged"
        except (OSError, RuntimeError, KeyError, EOFError, ValueError, TypeError):
            return "missing"
        return "done"

    def load(self, shard: range) -> dict[str, torch.Tensor]:
        """The shard's values; ValueError for another pass's shard, ShardDamaged if its content changed."""
        saved = torch.load(self.path(shard), map_location="cpu", weights_only=True)
        if saved["fingerprint"] != self.fingerprint:
            raise ValueError("a shard of another pass")
        values = saved["values"]
        if not isinstance(values, dict) or sha256_tensors(values) != saved["sha256"]:
            raise ShardDamaged(self.path(shard))
        return values

    def save(self, shard: range, values: Mapping[str, torch.Tensor]) -> None:
        values = {name: value.detach().cpu() for name, value in values.items()}
        record = {"fingerprint": self.fingerprint, "sha256": sha256_tensors(values), "values": values}
        buffer = io.BytesIO()
        torch.save(record, buffer)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise VaelabError(f"cannot create {self.directory}: {error.strerror}; choose a writable --out") from None
        atomic_write(self.path(shard), buffer.getvalue(), what="evaluation shard")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ShardDamaged(ValueError):
    """A shard file whose values no longer match the digest written with them."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path}: its values do not match their digest")
        self.path = path


@dataclass(frozen=True)
class Ranks:
    """Which shards this process computes: every world_size-th from rank; rank 0 merges."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class PassReport:
    """What `run_per_image` did: images resumed from disk and shards recomputed because they were damaged."""

    resumed_images: int = 0
    recomputed: list[str] = field(default_factory=list)


def run_per_image(
    model: LatentVariableModel,
    x: torch.Tensor,
    compute: ShardFunction,
    store: ShardStore,
    shard_images: int,
    *,
    ranks: Ranks = Ranks(),
    barrier: Callable[[], None] | None = None,
    progress: Callable[[int], None] | None = None,
    report: PassReport | None = None,
) -> dict[str, torch.Tensor] | None:
    """compute(model, x[shard], first image) for every shard of x (N, P) not already on disk, then (rank 0) the
    merged values of all shards; other ranks return None. `barrier` waits for every rank (torchrun);
    `progress(images)` is told each shard's size as it finishes, resumed ones first."""
    report = report if report is not None else PassReport()
    shards = shard_ranges(x.shape[0], shard_images)
    mine = shards[ranks.rank :: ranks.world_size]
    todo = []
    for shard in mine:
        state = store.state(shard)
        if state == "done":
            report.resumed_images += len(shard)
            if progress is not None:
                progress(len(shard))
            continue
        if state == "damaged":
            report.recomputed.append(store.path(shard).name)
            print(
                f"warning: shard {store.path(shard)} no longer matches its digest (changed on disk); computing "
                "it again",
                file=sys.stderr,
            )
        todo.append(shard)
    for shard in todo:
        store.save(shard, compute(model, x[shard.start : shard.stop], shard.start))
        if progress is not None:
            progress(len(shard))
    if barrier is not None:
        barrier()  # every shard is on disk
    if not ranks.is_main:
        return None
    parts = []
    for shard in shards:
        try:
            parts.append(store.load(shard))
        except ShardDamaged as error:
            raise VaelabError(
                f"{error}; a shard changed on disk while the pass ran: rerun the same command to compute it again"
            ) from None
        except (OSError, RuntimeError, KeyError, EOFError, ValueError, TypeError):
            raise VaelabError(
                f"shard {store.path(shard)} is missing or unreadable at the merge; rerun the same command "
                "to compute it again"
            ) from None
    return merge_shards(parts)
