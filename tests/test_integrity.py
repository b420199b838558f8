"""vaelab.integrity: digests against hashlib, the remembered digest's stamp, strict schema types."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from vaelab.errors import VaelabError
from vaelab.integrity import check_schema, remembered_sha256, sha256_file, sha256_tensors, verify_file


def test_sha256_file_equals_hashlib_across_buffer_boundaries(tmp_path):
    data = os.urandom((1 << 20) + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_verify_file_refuses_one_changed_byte(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"abc" * 100)
    digest = sha256_file(path)
    verify_file(path, digest, what="shard", fix="rerun")
    path.write_bytes(b"abd" + b"abc" * 99)
    with pytest.raises(VaelabError, match="has changed since it was written.*rerun"):
        verify_file(path, digest, what="shard", fix="rerun")


def test_tensor_digest_sees_one_value_dtype_and_name():
    values = {"L_1": torch.arange(5, dtype=torch.float64), "kl": torch.ones(5, dtype=torch.float64)}
    digest = sha256_tensors(values)
    assert sha256_tensors(dict(reversed(values.items()))) == digest  # key order does not matter
    changed = {**values, "L_1": values["L_1"].clone()}
    changed["L_1"][3] += 1e-12
    assert sha256_tensors(changed) != digest
    assert sha256_tensors({**values, "kl": values["kl"].float()}) != digest
    assert sha256_tensors({"L_2": values["L_1"], "kl": values["kl"]}) != digest


def test_remembered_digest_rehashes_only_when_size_or_mtime_move(tmp_path):
    path, stamp = tmp_path / "train.npy", tmp_path / "train.npy.sha256"
    path.write_bytes(b"x" * 1000)
    first = remembered_sha256(path, stamp)
    assert first == hashlib.sha256(b"x" * 1000).hexdigest() and stamp.is_file()
    # Same size and mtime: the stamp is believed (that is what makes the check cheap) ...
    status = path.stat()
    path.write_bytes(b"y" * 1000)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert remembered_sha256(path, stamp) == first
    # ... a moved mtime hashes again.
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert remembered_sha256(path, stamp) == hashlib.sha256(b"y" * 1000).hexdigest()


def test_schema_types_are_strict():
    schema = {"epochs": int, "lr": float, "name": str}
    check_schema({"epochs": 2, "lr": 1, "name": "a"}, schema, where="config.json", fix="fix it")
    for bad, key in (
        ({"epochs": True, "lr": 1.0, "name": "a"}, "epochs"),
        ({"epochs": 2.5, "lr": 1.0, "name": "a"}, "epochs"),
        ({"epochs": 2, "lr": "x", "name": "a"}, "lr"),
        ({"epochs": 2, "name": "a"}, "lr"),
    ):
        with pytest.raises(VaelabError, match=f"'{key}'"):
            check_schema(bad, schema, where="config.json", fix="fix it")
    with pytest.raises(VaelabError, match="not an object"):
        check_schema([1], schema, where="config.json", fix="fix it")
