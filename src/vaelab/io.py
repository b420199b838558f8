"""The one atomic write: every file vaelab saves goes through `atomic_write`.

The bytes go to a temporary file beside the target, are fsync'ed, and the temporary file is
renamed over the target, then the directory is fsync'ed: a crash, `kill -9` or a full disk at
any moment leaves either the old complete file or the new complete one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

from vaelab.errors import VaelabError

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    """Where `atomic_write` stages `path`: `.NAME.PID.tmp` in the same directory (same filesystem)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")


def atomic_write(path: str | Path, content: bytes | str | Callable[[BinaryIO], None], *, what: str = "file") -> Path:
    """Replace `path` by `content` (bytes, text, or a function that writes to a binary file) atomically.

    Any failure to write (no space, no permission, a serializer that raises because the disk is
    full, as torch.save does with RuntimeError) becomes one VaelabError naming `what` and the fix;
    the previous file at `path` is left as it was and no partial file remains.
    """
    path = Path(path)
    temporary = temporary_path(path)
    remove_stale_temporaries(path)
    try:
        with open(temporary, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode() if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        _discard(temporary)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).strip().splitlines()[0]
        raise VaelabError(
            f"cannot write {what} {path}: {reason}; the previous {what} is kept; "
            "check that the directory is writable and has space"
        ) from None
    except BaseException:  # e.g. a second Ctrl-C inside the serializer: leave no partial file behind
        _discard(temporary)
        raise
    with contextlib.suppress(OSError):  # some filesystems cannot open a directory for fsync
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def _discard(temporary: Path) -> None:
    with contextlib.suppress(OSError):
        temporary.unlink()


def remove_stale_temporaries(path: Path) -> None:
    """Delete `.NAME.PID.tmp` files left by writers that died (kill -9, power loss) mid-write.

    A temporary file is never read in place of the target, but they would pile up; one whose
    process is still alive on this machine is left alone.
    """
    with contextlib.suppress(OSError):  # tidying only; the write itself reports a directory it cannot use
        for temporary in path.parent.glob(f".{path.name}.*{TEMPORARY_SUFFIX}"):
            pid = temporary.name[len(path.name) + 2 : -len(TEMPORARY_SUFFIX)]
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
