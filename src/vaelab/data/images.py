"""Users' own images: a folder of PNG/JPEG files or a .npy/.npz array, converted once into a uint8 cache
that is memory-mapped when read (and the resizing that IDX files of any size share with them).

    load_images("folder", "photos/", cache_root=root, image_size=32, test_fraction=0.1)  # -> Converted

The cache lives in `<cache dir>/converted/<key>/` (key: a digest of the source's identity, its files'
relative paths, sizes and mtimes or an array file's SHA-256, and the conversion settings) as train.npy
and test.npy (uint8 (N, C, H, W): channel first, the layout torch convolutions read; grey is C = 1),
train_labels.npy and test_labels.npy (int64 (N,)), for a folder names.json (each image's path relative to the
folder, {"train": [...], "test": [...]} in the splits' order) and meta.json, written last: a directory without
meta.json is an unfinished conversion and is built again; a failed conversion removes what it wrote.
Each read checks meta.json's schema and the files against its digests (cache_digest over train.npy then
test.npy, labels_digest over the two label files, names_digest over names.json), hashed once and remembered
beside them with the files' sizes and mtimes (vaelab.integrity), so a damaged entry is found at every run start
for the price of a stat; a damaged entry is derived data, converted again from its source with one line on
stderr, as is a folder's entry written before names.json was recorded. A conversion that
would not fit on the disk, or images of an absurd stored size, are refused before anything is written.
A conversion streams: each image is decoded, checked, resized and written into the memory-mapped output
on its own (an array in blocks), so memory stays flat however many files there are; a split read back is
`np.load(mmap_mode="c")` behind a torch tensor, so a set larger than memory still trains.

Folders follow torchvision's ImageFolder: the subfolders are the classes (sorted, labels 0..n-1; files
directly in the folder get label 0 when there are no class folders); `train/` and `test/` subfolders are
the splits (their class names pooled), else a seeded `test_fraction` of the images is held out. Directory
symlinks are not followed (a link loop cannot trap the walk); linked files are read. Modes 1 and L stay
grey (C = 1); if any image is colour (RGB, RGBA, LA, palette), all become RGB (C = 3), alpha dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from vaelab import integrity
from vaelab.errors import VaelabError
from vaelab.integrity import printable
from vaelab.io import atomic_write, remove_stale_temporaries, temporary_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared case-insensitively
ARRAY_SUFFIXES = (".npy", ".npz")
GREY_MODES = ("1", "L")
COLOUR_MODES = ("RGB", "RGBA", "LA", "P", "PA", "YCbCr")  # converted to RGB; alpha is dropped
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 16- or 32-bit pixels: refused
SPLITS = ("train", "test")
CONVERTED_DIR = "converted"
META_NAME = "meta.json"
CACHE_FORMAT = 1  # part of the key: a change of layout converts again rather than misreading
CACHE_STAMP, LABELS_STAMP = "cache.sha256", "labels.sha256"  # the remembered digests (integrity.remembered_*)
NAMES_NAME, NAMES_STAMP = "names.json", "names.sha256"  # a folder's file names and their remembered digest
ARRAY_NAMES = ("train", "test", "train_labels", "test_labels")
# Without --image-size, images larger than this are almost surely an oversight (photos straight off a camera):
# a 4000x4000 colour image is 48 MB of cache, and no model here trains at that size.
MAX_STORED_PIXELS = 2048 * 2048
# Labels are class numbers 0..n-1; per-class tables and plot legends hold one entry per number up to the largest.
MAX_LABEL = (1 << 20) - 1
_BLOCK_BYTES = 1 << 26  # an array is converted in blocks of about 64 MB
# meta.json's keys and types; labels_digest is absent from entries written before it was recorded, names_digest
# from those and from an array's (its images have no file names).
_META_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "source": str,
    "kind": str,
    "classes": list,
    "shape": list,
    "channels": int,
    "train": int,
    "test": int,
    "source_digest": str,
    "cache_digest": str,
    "image_size": int,
    "test_fraction": float,
    "seed": int,
}

# meta.json's digest -> the files it covers, in order, and the stamp that remembers it.
_DIGESTS = (
    ("cache_digest", ("train.npy", "test.npy"), CACHE_STAMP),
    ("labels_digest", ("train_labels.npy", "test_labels.npy"), LABELS_STAMP),
    ("names_digest", (NAMES_NAME,), NAMES_STAMP),
)
_WRITTEN_BESIDE = (CACHE_STAMP, LABELS_STAMP, NAMES_STAMP, NAMES_NAME)  # besides the arrays and meta.json


@dataclass(frozen=True)
class Converted:
    """A finished cache entry: the memory-mapped splits, images (N, C, H, W) uint8 and labels (N,) int64, and meta."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    meta: dict  # meta.json: source, kind, shape (C, H, W), channels, train, test, classes, digests, settings
    train_names: tuple[str, ...] | None = None  # a folder's files, relative to it, in the split's order
    test_names: tuple[str, ...] | None = None


# ---------------------------------------------------------------------------------------------
# Entry points.


def load_images(
    kind: str,
    path: str | Path,
    *,
    cache_root: Path,
    image_size: int = 0,
    test_fraction: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> Converted:
    """The images of `path` (kind "folder" or "array") as (N, C, H, W) uint8, converted into the cache once.

    image_size S > 0: the shorter side resized to S (bilinear, antialiased) and centre-cropped to S x S;
    test_fraction and seed: the held-out share of a source without its own train and test parts; 1 makes every
    image a test image, in the source's order (a set to encode or score, not to train on).
    """
    if image_size < 0:
        raise VaelabError(f"--image-size must be >= 0 (got {image_size}); 0 keeps the stored size")
    if not 0 <= test_fraction <= 1:
        raise VaelabError(f"--test-fraction must be in [0, 1] (got {test_fraction}); e.g. 0.1")
    path = Path(path).expanduser()
    if kind == "folder":
        source: _FolderSource | _ArraySource = _FolderSource(path)
    elif kind == "array":
        source = _ArraySource(path)
    else:
        raise VaelabError(f"unknown image source {kind!r}; choose folder or array")
    # A source with its own train and test parts is not split: the seed and fraction do not change it.
    settings = {
        "image_size": int(image_size),
        "test_fraction": 0.0 if source.presplit else float(test_fraction),
        "seed": 0 if source.presplit else int(seed),
    }
    identity = {"format": CACHE_FORMAT, "kind": kind, "source": source.identity_digest(), **settings}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    directory = cache_root / CONVERTED_DIR / key
    if (directory / META_NAME).is_file():
        try:
            converted = _read_verified(directory)
        except _Damaged as damage:  # derived data, and its source is here: converted again, said in one line
            print(
                f"vaelab: the converted cache {directory} is damaged ({damage}); converting it again from "
                f"{printable(path)}",
                file=sys.stderr,
            )
        else:
            if kind != "folder" or converted.train_names is not None:
                return converted
            print(
                f"vaelab: the converted cache {directory} was written before file names were recorded; converting "
                f"it again from {printable(path)} (once)",
                file=sys.stderr,
            )
    return source.convert(directory, settings, progress)


class _Damaged(Exception):
    """A cache entry that is not what its meta.json says (the reason is the message)."""


def read_converted(directory: Path) -> Converted:
    """A finished cache entry, verified against meta.json's digests, its arrays memory-mapped copy-on-write
    (torch wants a writable array; no copy); a damaged entry is a VaelabError."""
    try:
        return _read_verified(directory)
    except _Damaged as damage:
        raise VaelabError(f"the converted cache {directory} is damaged ({damage}); delete it and load again") from None


def _read_verified(directory: Path) -> Converted:
    """read_converted, a damaged entry raising _Damaged: meta.json's schema, then the digests, then the arrays'
    dtypes and shapes and the names' counts against meta.json."""
    try:
        meta = _read_meta(directory)
        _verify_digests(directory, meta)
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="c", allow_pickle=False) for name in ARRAY_NAMES}
        names = json.loads((directory / NAMES_NAME).read_text()) if "names_digest" in meta else None
    except (OSError, ValueError, EOFError, VaelabError) as error:
        raise _Damaged(str(error)) from None
    for split in SPLITS:
        images, labels = arrays[split], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.shape != (meta[split], *meta["shape"]):
            raise _Damaged(f"{split}.npy is {images.dtype} {images.shape}, meta.json says {meta['shape']}")
        if labels.dtype != np.int64 or labels.shape != (meta[split],):
            raise _Damaged(f"{split}_labels.npy does not hold {meta[split]} int64 labels")
        if names is not None and not _names_of(names, split, meta[split]):
            raise _Damaged(f"{NAMES_NAME} does not hold {meta[split]} {split} file names")
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    train_names, test_names = (tuple(names[split]) for split in SPLITS) if names is not None else (None, None)
    return Converted(
        tensors["train"],
        tensors["train_labels"],
        tensors["test"],
        tensors["test_labels"],
        meta,
        train_names,
        test_names,
    )


def _names_of(names: object, split: str, count: int) -> bool:
    """Whether names.json's `names` holds a list of `count` strings under `split`."""
    listed = names.get(split) if isinstance(names, dict) else None
    return isinstance(listed, list) and len(listed) == count and all(isinstance(name, str) for name in listed)


def _read_meta(directory: Path) -> dict:
    """meta.json of a cache entry, its keys and types checked (VaelabError, OSError or ValueError if not)."""
    meta = json.loads((directory / META_NAME).read_text())
    integrity.check_schema(meta, _META_SCHEMA, where=META_NAME, fix="it was edited or cut short")
    shape, classes = meta["shape"], meta["classes"]
    if len(shape) != 3 or not all(integrity.is_instance(n, int) and n > 0 for n in shape):
        raise VaelabError(f"{META_NAME}: 'shape' is {shape!r}, not three positive integers (C, H, W)")
    if not all(isinstance(name, str) for name in classes) or min(meta["train"], meta["test"]) < 0:
        raise VaelabError(f"{META_NAME}: 'classes' holds a non-name or a count is negative")
    return meta


def _verify_digests(directory: Path, meta: dict) -> None:
    """Raise VaelabError unless the files' (remembered) digests are meta.json's (_DIGESTS): cache_digest always,
    labels_digest and names_digest where meta.json has them."""
    for key, names, stamp in _DIGESTS:
        if key not in meta:
            continue  # cache_digest is in the schema; the others are absent from older entries and arrays'
        paths = [directory / name for name in names]
        actual = integrity.remembered_sha256_files(paths, directory / stamp)
        if actual != meta[key]:
            shown = " then ".join(path.name for path in paths)
            raise VaelabError(f"{shown} have SHA-256 {actual[:16]}..., meta.json's {key} is {str(meta[key])[:16]}...")


def converted_entries(cache_root: Path) -> list[dict]:
    """meta.json of every conversion in the cache with its dir and bytes; an unfinished one has a problem instead."""
    entries = []
    for directory in sorted(path for path in (cache_root / CONVERTED_DIR).glob("*") if path.is_dir()):
        size = sum(path.stat().st_size for path in directory.glob("*.npy"))
        try:
            meta = _read_meta(directory)
        except FileNotFoundError:
            entries.append({"dir": str(directory), "bytes": size, "problem": "unfinished conversion (no meta.json)"})
        except (OSError, ValueError):
            entries.append({"dir": str(directory), "bytes": size, "problem": "unreadable meta.json"})
        except VaelabError as error:
            entries.append({"dir": str(directory), "bytes": size, "problem": str(error)})
        else:
            entries.append({**meta, "dir": str(directory), "bytes": size})
    return entries


def image_shape(images: torch.Tensor) -> tuple[int, int, int]:
    """(C, H, W) of stored images: (N, H, W) is grey, (1, H, W); (N, C, H, W) gives its own."""
    if images.dim() == 3:
        return (1, int(images.shape[1]), int(images.shape[2]))
    channels, height, width = (int(n) for n in images.shape[1:])
    return (channels, height, width)


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> (N, C, S, S): the shorter side resized to S, centre-cropped, as folders."""
    channels = image_shape(images)[0]
    out = np.empty((images.shape[0], channels, image_size, image_size), dtype=np.uint8)
    for i in range(images.shape[0]):
        out[i] = _resized(_channels_last(images[i].numpy()), channels, image_size)
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# A folder of PNG/JPEG files.


class _FolderSource:
    """The files under a folder, in sorted order of relative path, with their labels and (train/test) splits."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise VaelabError(f"image folder {root} does not exist or is not a directory; pass --data-dir DIR")
        self.root = root.resolve()
        self.names = sorted(path.relative_to(self.root).as_posix() for path in _walk_images(self.root))
        if not self.names:
            raise VaelabError(
                f"no images in {root}: no {' '.join(IMAGE_SUFFIXES)} files (any case) in it or its subfolders; "
                "point --data-dir at the folder holding them"
            )
        self.presplit = all((self.root / split).is_dir() for split in SPLITS)
        parts = [name.split("/") for name in self.names]
        if self.presplit:
            outside = [name for name, part in zip(self.names, parts) if part[0] not in SPLITS]
            if outside:
                raise VaelabError(
                    f"{len(outside)} images lie outside train/ and test/ in {printable(root)} (e.g. "
                    f"{printable(outside[0])}); "
                    "move them into one of the two, or remove them"
                )
            self.is_test = np.array([part[0] == "test" for part in parts], dtype=bool)
            for split, count in (("train", (~self.is_test).sum()), ("test", self.is_test.sum())):
                if not count:
                    raise VaelabError(f"{root}/{split}/ holds no images; add some, or remove train/ and test/")
            parts = [part[1:] for part in parts]
        self.classes = tuple(sorted({part[0] for part in parts if len(part) > 1}))
        loose = [name for name, part in zip(self.names, parts) if len(part) == 1]
        if self.classes and loose:
            shown = ", ".join(map(printable, self.classes[:3])) + (", ..." if len(self.classes) > 3 else "")
            raise VaelabError(
                f"{printable(loose[0])} lies beside the class folders ({shown}) in {printable(root)}; "
                "move each image into its class's folder, or remove it"
            )
        index = {name: label for label, name in enumerate(self.classes)}
        self.labels = np.array([index[part[0]] if len(part) > 1 else 0 for part in parts], dtype=np.int64)

    def identity_digest(self) -> str:
        """SHA-256 over the root and each file's relative path, size and mtime: a changed file converts again."""
        digest = hashlib.sha256(os.fsencode(self.root))  # fsencode: a name that is not UTF-8 has its own bytes
        for name in self.names:
            stat = (self.root / name).stat()
            digest.update(b"\0" + os.fsencode(name) + f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def convert(self, directory: Path, settings: dict, progress: bool) -> Converted:
        """Check every header (modes, sizes), then stream each decoded image into the cache."""
        image_size = settings["image_size"]
        is_test = self.is_test if self.presplit else _held_out(len(self.names), settings, str(self.root))
        channels, size = self._scan(image_size, progress)
        shape = (channels, *((image_size, image_size) if image_size else size))

        def fill(outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> str:
            # source_digest: SHA-256 over, file by file in sorted order, "relative path NUL SHA-256(bytes)".
            digest = hashlib.sha256()
            filled = dict.fromkeys(SPLITS, 0)
            bar = tqdm(self.names, desc=f"converting {self.root}", unit="image", disable=not progress)
            for name, test, label in zip(bar, is_test, self.labels):
                data = _read_file(self.root / name, printable(name))
                digest.update(os.fsencode(name) + b"\0" + hashlib.sha256(data).digest())
                split = "test" if test else "train"
                outputs[split][filled[split]] = _resized(_decode(data, printable(name)), channels, image_size)
                labels[split][filled[split]] = label
                filled[split] += 1
            return digest.hexdigest()

        counts = {"train": int((~is_test).sum()), "test": int(is_test.sum())}
        described = {"source": str(self.root), "kind": "folder", "classes": list(self.classes), **settings}
        names: dict[str, list[str]] = {split: [] for split in SPLITS}  # each split's, in the order fill writes them
        for name, test in zip(self.names, is_test):
            names["test" if test else "train"].append(name)
        return _build(directory, shape, counts, fill, described, names)

    def _scan(self, image_size: int, progress: bool) -> tuple[int, tuple[int, int]]:
        """(channels, (height, width)) from every file's header: what cannot be read is refused before any writing."""
        sizes: dict[tuple[int, int], str] = {}  # (width, height) -> the first file of that size
        colour = False
        bar = tqdm(self.names, desc=f"checking {self.root}", unit="image", disable=not progress, leave=False)
        for name in bar:
            shown = printable(name)  # one line in a message, whatever bytes the name holds
            size, mode = _header(self.root / name, shown)
            _check_mode(mode, shown)
            colour = colour or mode in COLOUR_MODES
            sizes.setdefault(size, shown)
            if len(sizes) > 1 and not image_size:
                (a, first), (b, second) = list(sizes.items())[:2]
                raise VaelabError(
                    f"the images differ in size: {first} is {a[0]}x{a[1]}, {second} is {b[0]}x{b[1]} (width x height); "
                    "pass --image-size S to resize the shorter side to S and centre-crop S x S"
                )
        width, height = next(iter(sizes))
        return (3 if colour else 1), (height, width)


def _walk_images(root: Path) -> Iterator[Path]:
    """Image files under root; directory symlinks are not followed, so a link loop ends the walk, not the program.
    A folder that cannot be listed is refused: skipping it would drop its images (and a class) without a word."""
    for directory, subdirs, files in os.walk(root, onerror=_unlistable, followlinks=False):
        subdirs.sort()
        for name in files:
            path = Path(directory) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():  # a dangling link is no image
                yield path


def _unlistable(error: OSError) -> None:
    raise VaelabError(
        f"cannot list the folder {printable(error.filename)} ({error.strerror}): its images would be left out; "
        "give it read and execute permission (chmod u+rx), or move it out of the data folder"
    )


def _read_file(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise VaelabError(f"cannot read {name}: {error.strerror}; check the file and its permissions") from None


# ---------------------------------------------------------------------------------------------
# A .npy or .npz array of uint8 images.


class _ArraySource:
    """uint8 images (N, H, W) or (N, H, W, C), C in 1, 3: one array to split, or train and test arrays."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise VaelabError(f"array file {printable(path)} does not exist; pass --data-dir FILE.npy or FILE.npz")
        if path.suffix.lower() not in ARRAY_SUFFIXES:
            raise VaelabError(
                f"{printable(path)} is not a .npy or .npz file; save the images with numpy.save or numpy.savez"
            )
        self.path = path.resolve()
        self.sha256 = ""
        with self._open() as opened:
            if isinstance(opened, np.ndarray):  # the header alone is read: check it before hashing the file
                _check_images(opened, str(path))
                self.presplit = False
            else:
                self.presplit = set(SPLITS) <= set(opened.files)

    def identity_digest(self) -> str:
        """The file's SHA-256 (also its source_digest); read in chunks, whatever its size."""
        if not self.sha256:
            self.sha256 = integrity.sha256_file(self.path)
        return self.sha256

    @contextlib.contextmanager
    def _open(self) -> Iterator[np.ndarray | np.lib.npyio.NpzFile]:
        """The .npy memory-mapped (read-only: nothing is read into memory), or the .npz archive (members unread)."""
        try:
            with open(self.path, "rb") as file:
                is_zip = file.read(2) == b"PK"
            if is_zip:  # a cut .npz is refused here: np.load would raise with the file left open
                zipfile.ZipFile(self.path).close()
            opened = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise VaelabError(
                f"cannot read {printable(self.path)} as numpy data ({error}); save it with numpy.save/savez"
            ) from None
        try:
            yield opened
        finally:
            if not isinstance(opened, np.ndarray):
                opened.close()

    def convert(self, directory: Path, settings: dict, progress: bool) -> Converted:
        """Check the arrays, then write them channel first into the cache, a block at a time."""
        image_size = settings["image_size"]
        with self._open() as opened:
            parts = self._parts(opened, settings)  # split -> (images, rows to take, labels)
            first = parts["train"][0]
            channels = _channels(first)
            shape = (channels, *((image_size, image_size) if image_size else first.shape[1:3]))

            def fill(outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> str:
                total = sum(len(rows) for _, rows, _ in parts.values())
                bar = tqdm(total=total, desc=f"converting {self.path}", unit="image", disable=not progress)
                with bar:
                    for split, (images, rows, split_labels) in parts.items():
                        block = max(1, _BLOCK_BYTES // max(1, images[0].nbytes))
                        for start in range(0, len(rows), block):
                            taken = rows[start : start + block]
                            outputs[split][start : start + len(taken)] = _channels_first(
                                np.asarray(images[taken]), channels, image_size
                            )
                            bar.update(len(taken))
                        labels[split][:] = split_labels[rows] if split_labels is not None else 0
                return self.identity_digest()

            counts = {split: len(rows) for split, (_, rows, _) in parts.items()}
            described = {"source": str(self.path), "kind": "array", "classes": [], **settings}
            return _build(directory, shape, counts, fill, described)

    def _parts(self, opened: np.ndarray | np.lib.npyio.NpzFile, settings: dict) -> dict:
        """split -> (images, the rows of it that split takes, labels or None), every array checked."""
        where = printable(self.path)
        if isinstance(opened, np.ndarray):
            images, labels = opened, None
        else:
            keys = set(opened.files)
            if self.presplit:
                if ("train_labels" in keys) != ("test_labels" in keys):
                    raise VaelabError(f"{where} has labels for one split only; give train_labels and test_labels")
                parts = {}
                for split in SPLITS:
                    images = _check_images(_member(opened, split, where), f"{where} ({split})")
                    labels = _member(opened, f"{split}_labels", where) if f"{split}_labels" in keys else None
                    parts[split] = (images, np.arange(len(images)), _check_labels(labels, len(images), where))
                (train_h, train_w), (test_h, test_w) = (parts[split][0].shape[1:3] for split in SPLITS)
                channels = [_channels(parts[split][0]) for split in SPLITS]
                if channels[0] != channels[1]:
                    raise VaelabError(
                        f"{where}: train images have {channels[0]} channels, test {channels[1]}; give both one"
                    )
                if (train_h, train_w) != (test_h, test_w) and not settings["image_size"]:
                    raise VaelabError(
                        f"{where}: train images are {train_w}x{train_h}, test {test_w}x{test_h} (width x height); "
                        "pass --image-size S to resize the shorter side to S and centre-crop S x S"
                    )
                return parts
            name = next((key for key in ("images", "x") if key in keys), None)
            if name is None and len(keys) != 1:
                raise VaelabError(
                    f"{where} holds {', '.join(sorted(keys))}: name the arrays train and test (and train_labels, "
                    "test_labels), or give one array named images or x (and labels or y)"
                )
            images = _member(opened, name or next(iter(keys)), where)
            label_key = next((key for key in ("labels", "y") if key in keys), None) if name else None
            labels = _member(opened, label_key, where) if label_key else None
        images = _check_images(images, where)
        labels = _check_labels(labels, len(images), where)
        is_test = _held_out(len(images), settings, where)
        return {
            "train": (images, np.flatnonzero(~is_test), labels),
            "test": (images, np.flatnonzero(is_test), labels),
        }


_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _member(archive: np.lib.npyio.NpzFile, key: str, where: str) -> np.ndarray:
    """One array of an .npz, read into memory (zip members cannot be memory-mapped: for huge sets, use .npy),
    after its header is checked against the bytes the member holds (a lying header would allocate first)."""
    try:
        claimed, held = _member_bytes(archive, key)
    except _NPZ_ERRORS as error:
        raise VaelabError(f"{where}: cannot read its array {key!r} ({error}); save it again with numpy.savez") from None
    if claimed > held:
        raise VaelabError(
            f"{where}: its array {key!r} claims {claimed:,} bytes but holds {held:,}; the file is damaged, save it "
            "again with numpy.savez"
        )
    try:
        return archive[key]
    except _NPZ_ERRORS as error:
        raise VaelabError(f"{where}: cannot read its array {key!r} ({error}); save it again with numpy.savez") from None
    except MemoryError:
        raise VaelabError(
            f"{where}: its array {key!r} ({claimed / 1e9:.3g} GB) does not fit in memory; save it with numpy.save "
            "as a .npy file, which is memory-mapped"
        ) from None


def _member_bytes(archive: np.lib.npyio.NpzFile, key: str) -> tuple[int, int]:
    """(bytes its .npy header claims, bytes of data the zip member holds after that header)."""
    info = archive.zip.getinfo(f"{key}.npy")
    with archive.zip.open(info) as member:
        version = np.lib.format.read_magic(member)
        # version 3 differs from 2 only in the header's text encoding (utf-8), which uint8 images never need
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
        header_bytes = member.tell()
    return int(np.prod(shape, dtype=object)) * dtype.itemsize, info.file_size - header_bytes


def _check_images(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim not in (3, 4):
        raise VaelabError(
            f"{where}: the images have shape {tuple(array.shape)}, but (N, H, W) grey or (N, H, W, C) is expected; "
            "reshape them"
        )
    if array.ndim == 4 and array.shape[3] not in (1, 3):
        raise VaelabError(
            f"{where}: {array.shape[3]} channels in shape {tuple(array.shape)}, but 1 (grey) or 3 (RGB) are read; "
            "drop the alpha channel (x[..., :3]) or reshape"
        )
    if array.dtype != np.uint8:
        raise VaelabError(
            f"{where}: the images are {array.dtype}, but uint8 pixels 0..255 are expected; convert values in [0, 1] "
            "with (x * 255).round().astype(np.uint8)"
        )
    if min(array.shape) == 0:
        raise VaelabError(f"{where}: an empty array (shape {tuple(array.shape)}); give at least one image")
    return array


def _channels(images: np.ndarray) -> int:
    """C of images (N, H, W) (1) or (N, H, W, C)."""
    return 1 if images.ndim == 3 else int(images.shape[3])


def _check_labels(labels: np.ndarray | None, count: int, where: str) -> np.ndarray | None:
    """None, or labels (count,) of non-negative integers as int64."""
    if labels is None:
        return None
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise VaelabError(
            f"{where}: labels are {labels.dtype} {tuple(labels.shape)}, but one integer per image ({count},) is "
            "expected; save them with .astype(np.int64)"
        )
    if labels.min() < 0:
        raise VaelabError(f"{where}: label {int(labels.min())} is negative; number the classes 0..n-1")
    if labels.max() > MAX_LABEL:  # before the cast to int64, which would wrap a uint64 of 2^63 or more
        raise VaelabError(
            f"{where}: label {int(labels.max())} is above {MAX_LABEL}; labels are class numbers, number the classes "
            "0..n-1 (e.g. np.unique(labels, return_inverse=True)[1])"
        )
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Decoding, refusing and resizing one image.


_PIL_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def _pil_errors() -> tuple[type[BaseException], ...]:
    """What Pillow raises for an unreadable file: UnidentifiedImageError (an OSError), SyntaxError, struct.error
    for a cut header, DecompressionBombError for an absurd size."""
    from PIL import Image

    return (*_PIL_ERRORS, Image.DecompressionBombError)


def _header(path: Path, name: str) -> tuple[tuple[int, int], str]:
    """(width, height) and Pillow mode of an image file, from its header alone."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except _pil_errors() as error:
        raise VaelabError(f"{name}: not a readable PNG/JPEG ({error}); replace or remove the file") from None


def _decode(data: bytes, name: str):  # -> PIL.Image.Image
    """A Pillow image of `data`, fully decoded (load()), so that a truncated file fails here, with its name."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except _pil_errors() as error:
        raise VaelabError(f"{name}: corrupt or truncated image ({error}); replace or remove the file") from None
    _check_mode(image.mode, name)
    return image


def _check_mode(mode: str, name: str) -> None:
    if mode in DEEP_MODES:
        bits = "16" if mode.startswith("I;16") else "32"
        raise VaelabError(
            f"{name}: a {bits}-bit image (mode {mode}), but 8-bit pixels are read; convert it to 8-bit grey or RGB"
        )
    if mode == "CMYK":
        raise VaelabError(f"{name}: a CMYK image; convert it to RGB (e.g. Pillow's image.convert('RGB'))")
    if mode not in GREY_MODES + COLOUR_MODES:
        raise VaelabError(f"{name}: pixel mode {mode} is neither 8-bit grey nor colour; convert it to L or RGB")


def _resized(image, channels: int, image_size: int) -> np.ndarray:
    """A Pillow image or uint8 (H, W[, C]) array -> uint8 (C, H, W): grey or RGB, the shorter side resized to
    image_size (bilinear, antialiased when shrinking) and centre-cropped to image_size x image_size (0: as is)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))
    with image:
        converted = image.convert("L" if channels == 1 else "RGB")  # RGBA, LA: alpha dropped
    if image_size:
        width, height = converted.size
        scale = image_size / min(width, height)
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        converted = converted.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        converted = converted.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(converted, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _channels_last(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (C, H, W) -> what Pillow reads: (H, W) grey, (H, W, 3) colour."""
    if image.ndim == 2:
        return image
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def _channels_first(block: np.ndarray, channels: int, image_size: int) -> np.ndarray:
    """uint8 (n, H, W) or (n, H, W, C) -> (n, C, H, W), each image resized and cropped if image_size > 0."""
    if image_size:
        images = block if block.ndim == 3 else (block[..., 0] if channels == 1 else block)
        return np.stack([_resized(image, channels, image_size) for image in images])
    return block[:, None] if block.ndim == 3 else block.transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# The seeded split and the writing of one cache entry.


def _held_out(count: int, settings: dict, where: str) -> np.ndarray:
    """(count,) bool: True for the round(test_fraction * count) images a seeded permutation holds out as test."""
    test_fraction = settings["test_fraction"]
    if not test_fraction:
        raise VaelabError(
            f"{where}: {count} images with no train/test split; pass --test-fraction F (e.g. 0.1) or make train/ and "
            "test/ subfolders"
        )
    if test_fraction == 1:  # the whole source is one set to use, not to train on
        return np.ones(count, dtype=bool)
    n_test = max(1, round(test_fraction * count))
    if n_test >= count:
        raise VaelabError(f"--test-fraction {test_fraction} of {count} images leaves none to train on; lower it")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(settings["seed"])).numpy()
    is_test = np.zeros(count, dtype=bool)
    is_test[order[:n_test]] = True
    return is_test


def _build(
    directory: Path,
    shape: tuple[int, int, int],
    counts: dict[str, int],
    fill: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], str],
    described: dict,
    names: dict[str, list[str]] | None = None,
) -> Converted:
    """Write one cache entry: fill(images, labels) writes every image (N, C, H, W) and label and returns the
    source digest; the arrays are staged beside their targets and renamed into place, names (split -> each
    image's file, in fill's order) into names.json, meta.json last.

    Any failure (a bad image, a full disk, Ctrl-C) removes what this conversion wrote; other entries are untouched.
    """
    _check_room(directory, shape, counts, described["image_size"])
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaelabError(
            f"cannot create the cache {directory} ({error.strerror}); set VAELAB_DATA to a writable directory"
        ) from None
    for name in (META_NAME, *_WRITTEN_BESIDE):  # unfinished from here until meta.json is written again
        (directory / name).unlink(missing_ok=True)
    targets = {split: directory / f"{split}.npy" for split in SPLITS}
    staged = {split: temporary_path(target) for split, target in targets.items()}
    try:
        images = {}
        for split in SPLITS:
            remove_stale_temporaries(targets[split])
            images[split] = np.lib.format.open_memmap(
                staged[split], mode="w+", dtype=np.uint8, shape=(counts[split], *shape)
            )
            _reserve(staged[split], directory)
        labels = {split: np.zeros(counts[split], dtype=np.int64) for split in SPLITS}
        source_digest = fill(images, labels)
        for split in SPLITS:
            images[split].flush()  # msync: the pages are on disk before the rename publishes them
        images.clear()  # unmaps them
        for split in SPLITS:
            os.replace(staged[split], targets[split])
            buffer = io.BytesIO()
            np.save(buffer, labels[split])
            atomic_write(directory / f"{split}_labels.npy", buffer.getvalue(), what="label cache")
        if names is not None:  # ensure_ascii: a name that is not UTF-8 keeps its bytes as \udcXX escapes
            atomic_write(directory / NAMES_NAME, json.dumps(names) + "\n", what="file names cache")
        meta = {
            **described,
            "shape": list(shape),
            "channels": shape[0],
            "train": counts["train"],
            "test": counts["test"],
            "source_digest": source_digest,
            **_digests(directory),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write(directory / META_NAME, json.dumps(meta, indent=2) + "\n", what="cache description")
    except BaseException:
        _discard_unfinished(directory, staged.values())
        raise
    return read_converted(directory)


def _check_room(directory: Path, shape: tuple[int, int, int], counts: dict[str, int], image_size: int) -> None:
    """Refuse, before anything is written, images of an absurd stored size and a cache the disk cannot hold."""
    count = sum(counts.values())
    size = count * (int(np.prod(shape)) + 8)  # uint8 pixels and an int64 label per image
    channels, height, width = shape
    described = f"{count} images of {channels}x{height}x{width} (channels x height x width)"
    if not image_size and height * width > MAX_STORED_PIXELS:
        raise VaelabError(
            f"{described} make a {size / 1e9:.3g} GB cache, too large to train on at their stored size; pass "
            "--image-size S (e.g. 64) to resize the shorter side to S and centre-crop S x S"
        )
    integrity.require_free_space(
        directory,
        size,
        what=f"the converted cache of {described}",
        fix="pass a smaller --image-size, free space, or set VAELAB_DATA to a larger disk",
    )


def _reserve(path: Path, directory: Path) -> None:
    """Allocate the staged file's blocks now, so a full disk is one error here, not a SIGBUS mid-conversion."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = path.stat().st_size
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, size)
        except OSError as error:
            if error.errno == 28:  # ENOSPC; other errors (a filesystem without fallocate) are left to the writes
                raise VaelabError(
                    f"no space for the {size / 1e6:.0f} MB cache in {directory}; free space or set VAELAB_DATA"
                ) from None


def _discard_unfinished(directory: Path, staged: object) -> None:
    """Remove a failed conversion's files (never when meta.json says another process finished it)."""
    with contextlib.suppress(OSError):
        for path in staged:  # type: ignore[attr-defined]
            path.unlink(missing_ok=True)
        if not (directory / META_NAME).exists():
            for name in (*(f"{name}.npy" for name in ARRAY_NAMES), *_WRITTEN_BESIDE):
                (directory / name).unlink(missing_ok=True)
            directory.rmdir()


def _digests(directory: Path) -> dict[str, str]:
    """cache_digest: SHA-256 over the bytes of train.npy then test.npy (their .npy headers included);
    labels_digest: the same over the label files; names_digest over names.json, where the entry has one. Hashed
    once here and remembered beside them, so the check at each read costs a stat while the files' sizes and mtimes
    stay."""
    return {
        key: integrity.remembered_sha256_files([directory / name for name in names], directory / stamp)
        for key, names, stamp in _DIGESTS
        if all((directory / name).is_file() for name in names)
    }


__all__ = [
    "Converted",
    "converted_entries",
    "image_shape",
    "load_images",
    "read_converted",
    "resize_images",
]
