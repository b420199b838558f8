"""Shared fixtures: tiny seeded data made on the spot, never the real datasets."""

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
