"""vaelab.integrity: digests against hashlib, the remembered digest's stamp, strict schema types."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from vaelab.errors import VaelabError
from vaelab import integrity
from vaelab.integrity import (
    check_schema,
    printable,
    utf8_text,
    remembered_sha256,
    remembered_sha256_files,
    require_free_space,
    sha256_file,
    sha256_files,
    sha256_tensors,
    verify_file,
)


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


def test_files_digest_is_the_digest_of_the_bytes_one_after_the_other_and_is_remembered(tmp_path):
    first, second, stamp = tmp_path / "train.npy", tmp_path / "test.npy", tmp_path / "cache.sha256"
    first.write_bytes(b"a" * 3000)
    second.write_bytes(b"b" * 10)
    expected = hashlib.sha256(b"a" * 3000 + b"b" * 10).hexdigest()
    assert sha256_files([first, second]) == expected == remembered_sha256_files([first, second], stamp)
    status = second.stat()
    second.write_bytes(b"c" * 10)
    os.utime(second, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert remembered_sha256_files([first, second], stamp) == expected  # neither size nor mtime moved
    os.utime(second, ns=(status.st_atime_ns, status.st_mtime_ns + 1))
    assert remembered_sha256_files([first, second], stamp) == hashlib.sha256(b"a" * 3000 + b"c" * 10).hexdigest()


def test_free_space_is_required_with_a_margin(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "free_bytes", lambda directory: 3 * 10**9)
    require_free_space(tmp_path, 10**9, what="the cache", fix="free space")
    with pytest.raises(VaelabError, match=r"the cache needs 2.5 GB but .* has 3 GB free .*; free space"):
        require_free_space(tmp_path, 25 * 10**8, what="the cache", fix="free space")  # 1 GiB spare is not left


def test_printable_names_stay_on_one_line():
    assert printable("cats/0001.png") == "cats/0001.png" and printable("été.png") == "été.png"
    assert printable("bad\nname.png") == "'bad\\nname.png'"
    assert printable(os.fsdecode(b"\xff.png")) == "'\\udcff.png'" and printable(b"\xff.png") == "'\\udcff.png'"


def test_utf8_text_keeps_a_utf8_name_and_writes_other_bytes_as_hex():
    assert utf8_text('cats, "big"/été\n.png') == 'cats, "big"/été\n.png'
    assert utf8_text(os.fsdecode(b"a/\xff\xfe.png")) == "a/\\xff\\xfe.png"
    assert utf8_text(os.fsdecode(b"a/\xff.png")).encode() == b"a/\\xff.png"  # encodes: no surrogate left
