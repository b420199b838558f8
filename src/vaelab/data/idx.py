"""The IDX format of MNIST and Fashion-MNIST: decoding, reading and writing uint8 tensors.

An IDX file is a magic (0, 0, type code, ndim), ndim big-endian uint32 dims, then the values
row-major; only type code 0x08 (unsigned byte), the one these datasets use, is supported.
Every malformation (a truncated or padded file, an absurd header, corrupt gzip, a gzip bomb)
is one VaelabError, checked before anything of the declared size is allocated, and files are
written atomically through `vaelab.io.atomic_write`.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import torch

from vaelab.errors import VaelabError
from vaelab.io import atomic_write

_IDX_UINT8 = 0x08
_IDX_MAX_NDIM = 4
# Refuses gzip bombs and absurd headers; the largest real file here is 47 MB.
_IDX_MAX_BYTES = 1 << 30
_GUNZIP_CHUNK = 1 << 24


def parse_idx(data: bytes, *, expected_ndim: int | None = None) -> torch.Tensor:
    """Decode IDX bytes (raw or gzip) into a uint8 tensor of the declared shape (d1, ..., dn)."""
    return _decode_idx(data, expected_ndim)[1]


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (raw, or gzip whatever its name) into a uint8 tensor of its shape."""
    return _read_idx_file(Path(path), None)[1]


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor of 1..4 dims as IDX, gzip-compressed when the name ends in .gz."""
    path = Path(path)
    if tensor.dtype != torch.uint8:
        raise VaelabError(f"write_idx takes uint8 tensors, got {tensor.dtype}; convert with .to(torch.uint8)")
    shape = tuple(tensor.shape)
    if not 1 <= len(shape) <= _IDX_MAX_NDIM:
        raise VaelabError(f"write_idx takes 1 to {_IDX_MAX_NDIM} dims, got shape {shape}; reshape it")
    if min(shape) == 0:
        raise VaelabError(f"IDX cannot hold an empty tensor (shape {shape}); write at least one value")
    data = _idx_bytes(tensor)
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write(path, data, what="IDX file")


def _idx_bytes(tensor: torch.Tensor) -> bytes:
    header = bytes([0, 0, _IDX_UINT8, tensor.dim()]) + np.array(tensor.shape, dtype=">u4").tobytes()
    return header + tensor.detach().cpu().contiguous().numpy().tobytes()


def _gunzip(data: bytes) -> bytes:
    chunks, total = [], 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            # Chunked, so a gzip bomb is stopped after at most one chunk past the limit.
            while chunk := stream.read(_GUNZIP_CHUNK):
                total += len(chunk)
                if total > _IDX_MAX_BYTES:
                    raise VaelabError(f"gzip data expands past {_IDX_MAX_BYTES} bytes; not an IDX file here")
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise VaelabError(f"corrupt gzip data ({err}); fetch or copy the file again") from None
    return b"".join(chunks)


def _decode_idx(data: bytes, expected_ndim: int | None) -> tuple[bytes, torch.Tensor]:
    """Return (the uncompressed IDX bytes, their tensor); every malformation is a VaelabError."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data)
    if len(data) < 4:
        raise VaelabError(f"IDX data too short ({len(data)} bytes) for its 4-byte magic; the file is truncated")
    zero_a, zero_b, type_code, ndim = data[:4]
    if zero_a != 0 or zero_b != 0:
        raise VaelabError(f"bad IDX magic {data[:4].hex()} (must start with 0000); this is not an IDX file")
    if type_code != _IDX_UINT8:
        raise VaelabError(f"IDX type code 0x{type_code:02x} is not supported; only unsigned bytes (0x08) are")
    if not 1 <= ndim <= _IDX_MAX_NDIM:
        raise VaelabError(f"IDX declares {ndim} dims; 1 to {_IDX_MAX_NDIM} are supported")
    if expected_ndim is not None and ndim != expected_ndim:
        raise VaelabError(f"IDX holds {ndim} dims where {expected_ndim} are expected; check the file name")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise VaelabError(f"IDX header truncated: {len(data)} bytes, {header_len} needed; the file is truncated")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if min(shape) == 0:
        raise VaelabError(f"IDX declares an empty dimension in shape {shape}; the file is corrupt")
    # Python ints: the product cannot overflow, and it is checked before anything is allocated.
    expected = 1
    for size in shape:
        expected *= size
    payload = len(data) - header_len
    if payload < expected:
        raise VaelabError(f"IDX truncated: shape {shape} needs {expected} bytes of values, found {payload}")
    if payload > expected:
        raise VaelabError(f"IDX has {payload - expected} bytes past the {expected} its shape {shape} declares")
    values = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)
    return data, torch.from_numpy(values.copy())


def _read_idx_file(path: Path, expected_ndim: int | None) -> tuple[bytes, torch.Tensor]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise VaelabError(f"cannot read {path}: {err.strerror}; check the path and its permissions") from None
    try:
        return _decode_idx(data, expected_ndim)
    except VaelabError as err:
        raise VaelabError(f"{path}: {err}") from None
