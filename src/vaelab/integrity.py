"""The one place that decides "is this file what we think it is": size, SHA-256 digest, JSON schema.

Every reader of something vaelab wrote earlier (the converted image cache, evaluation shards,
checkpoints, configs, detector files) asks here rather than checking in its own way:

    sha256_file(path)                       # hex digest, memory flat at any size
    sha256_files(paths)                     # one digest over several files' bytes, one after the other
    sha256_tensors(values)                  # digest of a dict of tensors' bytes, in key order
    verify_file(path, sha256, what=, fix=)  # the file's digest must be `sha256`, else VaelabError
    remembered_sha256(path, stamp)          # digest, re-hashed only when size or mtime moved
    remembered_sha256_files(paths, stamp)   # the same for sha256_files(paths)
    check_schema(mapping, schema, where=, fix=)  # keys present, types exact (a bool is not an int)
    require_free_space(directory, size, what=, fix=)  # refuse before writing what would fill the disk
    printable(name)                         # a file name as one printable line, for messages
    utf8_text(name)                         # a file name as text any UTF-8 writer takes, for result files

A mismatch is a VaelabError naming the file, what was expected and found, and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from vaelab.errors import VaelabError

if TYPE_CHECKING:  # torch loads only where tensors are hashed: configs are checked here without it
    import torch

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes, read through one reused 1 MiB buffer."""
    return sha256_files([path])


def sha256_files(paths: Sequence[str | Path]) -> str:
    """SHA-256 (hex) over the files' bytes one after the other, through one reused 1 MiB buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    for path in paths:
        with open(path, "rb") as file:
            while read := file.readinto(buffer):
                digest.update(view[:read])
    return digest.hexdigest()


def sha256_tensors(values: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over (name, dtype, shape, bytes) of each tensor in sorted name order: a content digest that
    does not depend on how the tensors were serialised."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(values):
        tensor = values[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def verify_file(path: str | Path, sha256: str, *, what: str, fix: str) -> None:
    """Raise VaelabError unless the file at `path` has SHA-256 `sha256`."""
    actual = sha256_file(path)
    if actual != sha256:
        raise VaelabError(
            f"{what} {path} has changed since it was written (SHA-256 {actual[:16]}..., expected "
            f"{sha256[:16]}...); {fix}"
        )


def remembered_sha256(path: str | Path, stamp: str | Path) -> str:
    """The file's SHA-256, hashed once and remembered in `stamp` with its size and mtime: while neither moves the
    remembered digest is returned without reading the file (a cheap check at every run start); a changed size or
    mtime hashes it again. A stamp that cannot be written is not an error (the digest is still returned)."""
    status = Path(path).stat()
    key = {"size": status.st_size, "mtime_ns": status.st_mtime_ns}
    return _remembered(key, Path(stamp), lambda: sha256_file(path))


def remembered_sha256_files(paths: Sequence[str | Path], stamp: str | Path) -> str:
    """sha256_files(paths), remembered in `stamp` as remembered_sha256 does: hashed again only when the size or
    mtime of one of the files moved."""
    statuses = [Path(path).stat() for path in paths]
    key = {"files": [[Path(path).name, s.st_size, s.st_mtime_ns] for path, s in zip(paths, statuses)]}
    return _remembered(key, Path(stamp), lambda: sha256_files(paths))


def _remembered(key: dict, stamp: Path, digest_of: Callable[[], str]) -> str:
    """The digest saved in `stamp` beside the same `key`, else digest_of(), saved there with `key`."""
    try:
        saved = json.loads(stamp.read_text())
        if isinstance(saved, dict) and {k: saved.get(k) for k in key} == key and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = digest_of()
    from vaelab.io import atomic_write  # io imports nothing of ours but errors; kept local for a light import

    try:
        atomic_write(stamp, json.dumps({**key, "sha256": digest}) + "\n", what="digest stamp")
    except VaelabError:
        pass
    return digest


def check_schema(mapping: Any, schema: Mapping[str, type | tuple[type, ...]], *, where: str, fix: str) -> None:
    """Raise VaelabError unless `mapping` is a dict holding every key of `schema` with a value of its type(s).

    Types are exact where it matters: a bool is not accepted for int or float, an int is accepted for float."""
    if not isinstance(mapping, dict):
        raise VaelabError(f"{where} holds {type(mapping).__name__}, not an object; {fix}")
    for key, expected in schema.items():
        if key not in mapping:
            raise VaelabError(f"{where} lacks {key!r}; {fix}")
        if not is_instance(mapping[key], expected):
            names = " or ".join(type_name(t) for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise VaelabError(
                f"{where}: {key!r} is {mapping[key]!r} ({type(mapping[key]).__name__}), expected {names}; {fix}"
            )


def is_instance(value: Any, expected: Any) -> bool:
    """isinstance where bool is not an int or float and an int is a float (JSON's numbers).

    `expected` is a type, a tuple of alternatives, or a type hint: `X | None`, `tuple[int, ...]` (any length) and
    `tuple[int, int]` (that length), a tuple hint matching a list or a tuple (JSON has only lists)."""
    if isinstance(expected, tuple):
        return any(is_instance(value, kind) for kind in expected)
    origin, arguments = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(is_instance(value, kind) for kind in arguments)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return all(is_instance(item, arguments[0]) for item in value)
        return len(value) == len(arguments) and all(map(is_instance, value, arguments))
    if expected is None or expected is type(None):
        return value is None
    if isinstance(value, bool):
        return expected is bool
    if isinstance(value, int) and expected is float:
        return True
    return isinstance(value, expected)


def type_name(expected: Any) -> str:
    """A type or type hint as a reader writes it: int, float, tuple[int, ...], str | None."""
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " | ".join(type_name(kind) for kind in typing.get_args(expected))
    if typing.get_origin(expected) is None and isinstance(expected, type):
        return "null" if expected is type(None) else expected.__name__
    return str(expected)


def free_bytes(directory: str | Path) -> int:
    """Bytes free for an unprivileged writer on the filesystem that holds `directory` (or its nearest existing
    parent)."""
    directory = Path(directory)
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    status = os.statvfs(directory)
    return status.f_bavail * status.f_frsize


FREE_SPACE_MARGIN = 1 << 30  # left free beyond what is written (or 5 % of it, if more): logs, checkpoints, the OS


def require_free_space(directory: str | Path, size: int, *, what: str, fix: str) -> None:
    """Raise VaelabError unless `size` bytes plus a margin (1 GiB or 5 % of size) are free where `directory` is."""
    free = free_bytes(directory)
    if size + max(FREE_SPACE_MARGIN, size // 20) > free:
        raise VaelabError(
            f"{what} needs {_human(size)} but {directory} has {_human(free)} free (and keeps 1 GiB or 5 % spare); {fix}"
        )


def _human(size: int) -> str:
    """Bytes as B, kB, MB, GB, TB (powers of 1000), three significant figures."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def printable(name: str | os.PathLike) -> str:
    """A file name as one printable line: as it is when it is (and is valid UTF-8), else quoted as Python's repr
    quotes it, so a newline, a control character or an undecodable byte (a surrogate escape) cannot split or
    garble an error line."""
    text = os.fspath(name)
    text = text if isinstance(text, str) else os.fsdecode(text)
    return text if text.isprintable() else repr(text)


def utf8_text(name: str | os.PathLike) -> str:
    """A file name as text that encodes to UTF-8: as it is when its bytes are UTF-8, else each byte that is not
    written as \\xNN (a surrogate escape left in would fail to encode). A newline stays: CSV quotes it."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
