"""Which images a use of a trained model reads: the run's own data set by default, or any other vaelab reads.

    select_images(train_config, split="validation")                     # the run's held-out images
    select_images(train_config, dataset="fashion-mnist", split="test")  # another data set

The run's data set is converted as it was for training (its data directory, image size and test fraction);
another data set is read as stored unless an image size is given. `validation` is the run's held-out last
`validation_size` training images, as training split them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vaelab.config import TrainConfig
from vaelab.data.sources import load_dataset
from vaelab.errors import VaelabError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Selection:
    """Images chosen for a verb: uint8 (N, H, W) or (N, C, H, W) in the source's order, their labels (N,) int64,
    where they came from, in words (for the table's heading and the result files), and their files (N,) relative
    to `source` where it is a folder (None where the source has no file names)."""

    images: torch.Tensor
    labels: torch.Tensor
    dataset: str
    split: str
    source: str
    names: tuple[str, ...] | None = None

    @property
    def description(self) -> str:
        return f"{self.images.shape[0]} {self.dataset} {self.split} images"


def select_images(
    config: TrainConfig,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    image_size: int | None = None,
    size: int = 0,
) -> Selection:
    """The first `size` (0 = all) images of `split` of `dataset` (default: the run's own, converted as trained)."""
    if split not in SPLITS:
        raise VaelabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if size < 0:
        raise VaelabError(f"--size must be >= 0 (got {size}); 0 takes every image of the split")
    own = dataset is None or dataset == config.dataset
    name = config.dataset if dataset is None else dataset
    if split == "validation" and (not own or config.validation_size == 0):
        why = "another data set" if not own else "a run trained without --validation-size"
        raise VaelabError(
            f"--split validation is the run's held-out training images, and this is {why}; "
            "use --split test (or train with --validation-size N)"
        )
    if own:
        loaded = load_dataset(
            name,
            data_dir if data_dir is not None else config.data_dir,
            image_size=config.image_size if image_size is None else image_size,
            test_fraction=config.test_fraction,
            seed=config.seed,
            progress=False,
        )
    else:  # another data set: a source without its own train and test parts is one test split, in order
        loaded = load_dataset(name, data_dir, image_size=image_size or 0, test_fraction=1.0, progress=False)
    # validation: the last validation_size training images, as training held them out
    part = loaded.train if split == "validation" else getattr(loaded, split)
    rows = slice(-config.validation_size, None) if split == "validation" else slice(None)
    images, labels, names = _rows((part.images, part.labels, part.names), rows)
    if images.shape[0] == 0:
        whole = " (a source without train/ and test/ parts is all test images)" if not own and split == "train" else ""
        raise VaelabError(f"the {split} split of {name} holds no images{whole}; choose another --split or --dataset")
    if size:
        if size > images.shape[0]:
            raise VaelabError(
                f"--size {size} exceeds the {images.shape[0]} images of the {split} split; use a smaller --size "
                "or 0 for all"
            )
        images, labels, names = _rows((images, labels, names), slice(size))
    return Selection(images, labels, name, split, loaded.source, names)


def _rows(columns: tuple, rows: slice) -> tuple:
    """The same rows of each column (images, labels, names); a column that is None stays None."""
    return tuple(column[rows] if column is not None else None for column in columns)
