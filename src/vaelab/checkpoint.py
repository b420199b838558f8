"""Checkpoints: a plain dict written atomically, read without ever running code.

Writing goes to a temporary file in the same directory, is fsync'ed, then renamed over the old
one, so a crash or `kill -9` at any moment leaves the previous complete checkpoint in place.
Reading uses `torch.load(weights_only=True)`: a file that would need arbitrary pickled objects
(and so could execute code) is refused.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.errors import VaelabError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the run directory that holds one, -> the file's path."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise VaelabError(f"no checkpoint at {path}; pass a checkpoint file or a run directory that holds {CHECKPOINT_NAME}")
    return path


def save(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically (temporary file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove_stale_temporaries(path)
    try:
        with open(temporary, "wb") as file:
            torch.save({**state, "format_version": FORMAT_VERSION}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _discard(temporary)
        raise VaelabError(f"cannot write checkpoint {path}: {error.strerror or error}; check the directory is writable and has space") from None
    except BaseException:  # e.g. a second Ctrl-C inside torch.save: leave no partial file behind
        _discard(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _discard(temporary: Path) -> None:
    with contextlib.suppress(OSError):
        temporary.unlink()


def _remove_stale_temporaries(path: Path) -> None:
    """Delete `.NAME.PID.tmp` files left by writers that died (kill -9, power loss) mid-save.

    A temporary file is never read as a checkpoint, but they would pile up; one whose process
    is still alive on this machine is left alone.
    """
    with contextlib.suppress(OSError):  # tidying only; the save itself reports a directory it cannot use
        for temporary in path.parent.glob(f".{path.name}.*.tmp"):
            pid = temporary.name[len(path.name) + 2 : -len(".tmp")]
            if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
                _discard(temporary)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save`; refuse anything that is not plain tensors and containers."""
    path = resolve(path)
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before refusing them; the refusal says it all.
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler refuses any global outside its allowlist before calling it.
        reason = re.search(r"unsupported (?:global: )?GLOBAL [\w.]+|Unsupported operand \d+", str(error), re.IGNORECASE)
        raise VaelabError(
            f"refused to load {path}: it holds something other than tensors and plain containers"
            f"{f' ({reason.group(0)})' if reason else ''}, so loading it could run code, or it is damaged; "
            f"only load checkpoints written by vaelab"
        ) from None
    except Exception as error:  # a damaged archive fails in many ways (RuntimeError, KeyError, IndexError, ...)
        message = str(error).strip().split("\n")[0].split(". ")[0]
        detail = "the file is empty" if path.stat().st_size == 0 else f"{type(error).__name__}: {message}"
        raise VaelabError(
            f"cannot read checkpoint {path} ({detail}); the file is truncated or damaged, "
            f"or not a vaelab checkpoint; use an intact copy"
        ) from None
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict)):
        raise VaelabError(f"{path} is not a vaelab checkpoint (no model weights and config inside)")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (loadable with weights_only)."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt_state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
