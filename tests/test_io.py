"""The one atomic write: a failure at any point keeps the previous file and leaves no partial one."""

import os
import subprocess
import sys

import pytest
import torch

from vaelab import checkpoint
from vaelab.errors import VaelabError
from vaelab.io import LOCK_NAME, RunLock, atomic_write


def test_a_full_disk_inside_torch_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError ("file write failed"), not OSError."""
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}, "config": {}}, path)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write "
            "failed"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(VaelabError) as raised:
        checkpoint.save({"model": {"w": torch.zeros(3)}, "config": {}}, path)
    message = str(raised.value)
    assert "\n" not in message and "file write failed" in message and "previous checkpoint is kept" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_no_space_left_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    atomic_write(path, "old\n")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(
        VaelabError, match="cannot write metrics file .*No space left on device; the previous metrics file is kept"
    ):
        atomic_write(path, "new\n", what="metrics file")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_the_write_replaces_the_whole_file_and_accepts_bytes_text_and_writers(tmp_path):
    path = tmp_path / "f"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(path, "text")
    assert path.read_text() == "text"
    atomic_write(path, lambda file: file.write(b"from a writer"))
    assert path.read_bytes() == b"from a writer"


def test_a_stale_temporary_of_a_dead_writer_is_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    stale = tmp_path / ".checkpoint.pt.999999999.tmp"  # no such process
    stale.write_bytes(b"partial")
    atomic_write(path, b"complete")
    assert not stale.exists() and path.read_bytes() == b"complete"


def test_a_second_writer_of_a_locked_directory_gets_one_clear_error(tmp_path, lock_holder):
    holder = lock_holder(tmp_path / "run")
    assert (tmp_path / "run" / LOCK_NAME).read_text() == f"holder (process {holder.pid})\n"
    with pytest.raises(VaelabError, match=rf"run is being written by holder \(process {holder.pid}\); wait"):
        with RunLock(tmp_path / "run"):
            pass
    holder.kill()
    holder.wait()
    with RunLock(tmp_path / "run", what="second") as lock:  # a killed holder's lock is free
        assert lock.path.read_text() == f"second (process {os.getpid()})\n"
        with pytest.raises(VaelabError, match="being written by second"):  # one writer, even in one process
            RunLock(tmp_path / "run").__enter__()
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # released: emptied, not removed


def test_the_lock_of_a_dead_writer_is_taken_over_and_said_so(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(f"vaelab train (process {dead.stdout.strip()})\n")
    with RunLock(tmp_path, what="vaelab train"):
        pass
    assert (
        f"took over the lock on {tmp_path} from vaelab train (process {dead.stdout.strip()})" in capsys.readouterr().err
    )
