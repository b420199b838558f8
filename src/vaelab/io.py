"""The one atomic write: every file vaelab saves goes through `atomic_write`.

The bytes go to a temporary file beside the target, are fsync'ed, and the temporary file is
renamed over the target, then the directory is fsync'ed: a crash, `kill -9` or a full disk at
any moment leaves either the old complete file or the new complete one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import sys
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


LOCK_NAME = ".lock"


class RunLock:
    """An advisory lock on a directory while one process writes it: `with RunLock(run_dir, what="vaelab train"):`.

    The lock is an flock on DIR/.lock, which holds the owner's pid and `what` while it is held and is emptied on
    release. The kernel drops an flock when its process dies, so a lock left by a killed writer is free; its pid still
    in the file is taken over and said so on standard error. A second writer gets one VaelabError naming the owner.
    Where flock does not exist (not POSIX) the lock only records the owner.
    """

    def __init__(self, directory: str | Path, *, what: str = "vaelab") -> None:
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise VaelabError(
                f"cannot write to {self.directory}: {error.strerror}; choose a writable directory"
            ) from None
        try:
            _flock(fd, exclusive=True)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise VaelabError(
                f"{self.directory} is being written by {owner or 'another process'}; wait for it to finish (or stop "
                "it), or choose another directory"
            ) from None
        previous = _read_owner(fd)
        if previous and _owner_pid(previous) not in (None, os.getpid()):
            print(
                f"vaelab: took over the lock on {self.directory} from {previous}, which ended without releasing it",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.what} (process {os.getpid()})\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is None:
            return
        # Emptied, not removed: removing a lock file lets a waiter lock the old inode while a third process locks a
        # new one.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        _flock(self._fd, exclusive=False)
        os.close(self._fd)
        self._fd = None


def _flock(fd: int, *, exclusive: bool) -> None:
    """Take (without waiting: BlockingIOError if held) or release the flock on `fd`; nothing without fcntl."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_UN)


def _read_owner(fd: int) -> str:
    """The lock file's owner line, "" when empty or unreadable."""
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _owner_pid(owner: str) -> int | None:
    """The pid in an owner line "WHAT (process PID)", None when it names none."""
    digits = owner.rpartition("process ")[2].rstrip(")")
    return int(digits) if digits.isdigit() else None
