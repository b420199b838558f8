"""Shared fixtures: tiny seeded data made on the spot (never the real datasets), and torch's global
settings pinned for the tests that depend on them (modules opt in with pytest.mark.usefixtures)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vaelab.data import IDX_FILES, Dataset, Split, write_idx


def _tiny_split(count: int, generator: torch.Generator) -> Split:
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return Split(images=images, labels=labels)


@pytest.fixture
def tiny_dataset() -> Dataset:
    """64 train and 32 test random 28x28 uint8 images with labels in 0..9 (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    return Dataset(name="tiny", train=_tiny_split(64, generator), test=_tiny_split(32, generator), source="synthetic")


@pytest.fixture
def tiny_idx_dir(tmp_path):
    """Factory: write the four IDX files of a tiny random dataset; return the root directory.

    make(n_train=12, n_test=5, *, gz=False, subdir="", seed=0) puts the files in root/subdir
    (e.g. subdir="MNIST/raw" for torchvision's layout), gzip-compressed when gz is true.
    """
    made = []

    def make(n_train: int = 12, n_test: int = 5, *, gz: bool = False, subdir: str = "", seed: int = 0) -> Path:
        root = tmp_path / f"idx{len(made)}"
        directory = root / subdir
        directory.mkdir(parents=True)
        generator = torch.Generator().manual_seed(seed)
        train, test = _tiny_split(n_train, generator), _tiny_split(n_test, generator)
        tensors = [train.images, train.labels.to(torch.uint8), test.images, test.labels.to(torch.uint8)]
        for stem, tensor in zip(IDX_FILES, tensors):
            write_idx(directory / (f"{stem}.gz" if gz else stem), tensor)
        made.append(root)
        return root

    return make


@pytest.fixture
def float64_default():
    """Comparisons against exact values: float64 tensors by default here, the previous default restored after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def plain_torch():
    """One thread (tiny models gain nothing from more, and on a busy machine two threads contend:
    measured 300x slower steps) and float32 by default, whatever another module has set globally."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


def wait_for(path: Path, process, timeout_s: float = 60.0) -> None:
    """Poll until `path` exists, failing if `process` exits or the timeout passes first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
        time.sleep(0.02)


def run_ok(argv, capsys) -> str:
    """`vaelab ARGV` in this process: exit status 0, its standard output returned."""
    from vaelab.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def run_refused(argv, capsys, match: str) -> str:
    """`vaelab ARGV` refused: exit status 2 and one line on standard error that contains `match`."""
    from vaelab.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], captured.err
    return lines[0]


HOLD_LOCK = """
import sys, time
from vaelab.io import RunLock
with RunLock(sys.argv[1], what="holder"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def lock_holder():
    """Factory: a child process that holds RunLock(directory) until the test ends; returns the process."""
    children = []

    def hold(directory):
        child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield hold
    for child in children:
        child.kill()
        child.wait()
        child.stdout.close()


def interrupted(monkeypatch, argv, shards: int = 2) -> None:
    """`vaelab ARGV` stopped as Ctrl-C would once `shards` of its per-image pass's shards are on disk (exit != 0)."""
    from vaelab.cli import main
    from vaelab.evaluation.runner import ShardStore

    saved = []
    original = ShardStore.save

    def save_then_die(self, shard, values):
        original(self, shard, values)
        saved.append(shard)
        if len(saved) == shards:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardStore, "save", save_then_die)
    try:
        assert main(argv) != 0  # Ctrl-C's exit
    finally:
        monkeypatch.setattr(ShardStore, "save", original)
