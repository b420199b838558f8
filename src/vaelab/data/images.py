"""Users' own images: a folder of PNG/JPEG files, a .npy/.npz array, or IDX files of any size, converted
once into a uint8 cache that is memory-mapped when read.

    load_images("folder", "photos/", image_size=32, test_fraction=0.1)  # -> Dataset, images (N, C, H, W)

The cache lives in `<cache dir>/converted/<key>/` (key: a digest of the source's identity and the
conversion settings) as train.npy and test.npy (uint8, (N, C, H, W): channel first, the layout torch
convolutions read), their labels, and meta.json, written last: a directory without meta.json is an
unfinished conversion and is built again. A conversion streams: each image is decoded, checked,
resized and written into the memory-mapped output on its own, so memory stays flat however many
files there are; a split read back is `np.load(mmap_mode="c")` behind a torch tensor, so a set
larger than memory still trains (the loop gathers its batches).

Folders follow torchvision's ImageFolder: the names of subfolders are the classes (sorted, labels
0..n-1); `train/` and `test/` subfolders are the splits, else a seeded `test_fraction` of the images
is held out. Directory symlinks are not followed (a link loop cannot trap the walk); linked files are
read. Grey images stay one channel; if any image is colour, all become RGB.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from vaelab.errors import VaelabError
from vaelab.io import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
GREY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "YCbCr")
CONVERTED_DIR = "converted"
META_NAME = "meta.json"
_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class Converted:
    """A cache entry: the memory-mapped splits, (N, C, H, W) uint8 and (N,) int64, and what they came from."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    meta: dict


# ---------------------------------------------------------------------------------------------
# Entry point.


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
    """The images of `path` (kind "folder" or "array"), converted into the cache once, memory-mapped."""
    path = Path(path).expanduser()
    if kind == "folder":
        source = _FolderSource(path)
    elif kind == "array":
        source = _ArraySource(path)
    else:
        raise VaelabError(f"unknown image source {kind!r}; choose folder or array")
    settings = {"image_size": int(image_size), "test_fraction": float(test_fraction), "seed": int(seed)}
    key = hashlib.sha256(json.dumps({"source": source.identity(), **settings}, sort_keys=True).encode()).hexdigest()
    directory = cache_root / CONVERTED_DIR / key[:20]
    if (directory / META_NAME).is_file():
        try:
            return read_converted(directory)
        except (OSError, ValueError, KeyError) as error:
            raise VaelabError(
                f"the converted cache {directory} is damaged ({error}); delete it and load again"
            ) from None
    return _convert(source, directory, settings, progress)


def read_converted(directory: Path) -> Converted:
    """A finished cache entry, its arrays memory-mapped (copy-on-write, so torch sees a writable array)."""
    meta = json.loads((directory / META_NAME).read_text())

    def mapped(name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(directory / name, mmap_mode="c", allow_pickle=False))

    return Converted(
        mapped("train.npy"), mapped("train_labels.npy"), mapped("test.npy"), mapped("test_labels.npy"), meta
    )


def converted_entries(cache_root: Path) -> list[dict]:
    """meta.json of every finished conversion in the cache, with its directory."""
    entries = []
    for meta_path in sorted((cache_root / CONVERTED_DIR).glob(f"*/{META_NAME}")):
        try:
            entries.append({**json.loads(meta_path.read_text()), "dir": str(meta_path.parent)})
        except (OSError, ValueError):
            entries.append({"dir": str(meta_path.parent), "problem": "unreadable meta.json"})
    return entries


# ---------------------------------------------------------------------------------------------
# Sources: what to convert, in which order, with which labels.


@dataclass(frozen=True)
class _Item:
    """One image of a source: where it is read from, its split (None: the seeded test fraction decides), label."""

    where: object  # a Path for a folder, an index for an array
    split: str | None
    label: int
    name: str  # for messages and the source digest


class _FolderSource:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise VaelabError(f"image folder {root} does not exist or is not a directory; pass --data-dir DIR")
        self.root = root.resolve()
        self.files = sorted(_walk_images(self.root), key=lambda p: p.relative_to(self.root).as_posix())
        if not self.files:
            raise VaelabError(
                f"no images in {root}: found no {', '.join(IMAGE_SUFFIXES)} files (any case) in it or its subfolders; "
                "point --data-dir at the folder holding them"
            )
        split_dirs = (self.root / "train").is_dir() and (self.root / "test").is_dir()
        self.presplit = split_dirs
        parts = [p.relative_to(self.root).parts for p in self.files]
        if split_dirs:
            parts = [part[1:] if part[0] in ("train", "test") else part for part in parts]
        self.classes = tuple(sorted({part[0] for part in parts if len(part) > 1}))
        self.items = []
        index = {name: i for i, name in enumerate(self.classes)}
        for file, part in zip(self.files, parts):
            relative = file.relative_to(self.root)
            split = relative.parts[0] if split_dirs and relative.parts[0] in ("train", "test") else None
            if split_dirs and split is None:
                continue  # beside train/ and test/: not part of either
            label = index[part[0]] if len(part) > 1 else 0
            self.items.append(_Item(file, split, label, relative.as_posix()))

    def identity(self) -> dict:
        stats = [(item.name, *_stat(item.where)) for item in self.items]
        return {"kind": "folder", "root": str(self.root), "files": stats}

    def header(self, item: _Item) -> tuple[tuple[int, int], str]:
        """(width, height) and Pillow mode of an image, from its header alone."""
        image = _open(item.where, item.name)
        with image:
            return image.size, image.mode

    def read(self, item: _Item) -> tuple[bytes, object]:
        data = Path(item.where).read_bytes()
        return data, _decode(data, item.name)


class _ArraySource:
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise VaelabError(f"array file {path} does not exist; pass --data-dir FILE.npy or FILE.npz")
        if path.suffix.lower() not in ARRAY_SUFFIXES:
            raise VaelabError(f"{path} is not a .npy or .npz file; save the images with numpy.save or numpy.savez")
        self.path = path.resolve()
        self.classes: tuple[str, ...] = ()
        arrays, labels = _read_arrays(self.path)
        self.arrays = {split: _check_array(array, f"{path} ({split or 'images'})") for split, array in arrays.items()}
        shapes = {array.shape[1:3] for array in self.arrays.values()}
        channels = {_channels_of(array) for array in self.arrays.values()}
        if len(shapes) > 1 or len(channels) > 1:
            raise VaelabError(f"{path}: the train and test arrays differ in image shape; give them one (H, W, C)")
        self.presplit = None not in self.arrays
        self.items = []
        for split, array in self.arrays.items():
            split_labels = labels.get(split)
            if split_labels is not None and len(split_labels) != len(array):
                raise VaelabError(f"{path}: {len(split_labels)} labels for {len(array)} images; give one per image")
            for i in range(len(array)):
                label = int(split_labels[i]) if split_labels is not None else 0
                self.items.append(_Item((split, i), split, label, f"{split or 'images'}[{i}]"))

    def identity(self) -> dict:
        return {"kind": "array", "path": str(self.path), "sha256": _file_sha256(self.path)}

    def header(self, item: _Item) -> tuple[tuple[int, int], str]:
        array = self.arrays[item.where[0]]
        return (array.shape[2], array.shape[1]), "L" if _channels_of(array) == 1 else "RGB"

    def read(self, item: _Item) -> tuple[bytes, object]:
        from PIL import Image

        split, i = item.where
        pixels = np.ascontiguousarray(self.arrays[split][i])
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        return pixels.tobytes(), Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")


def _walk_images(root: Path) -> Iterator[Path]:
    """Image files under root; directory symlinks are not followed, so a link loop ends the walk, not the program."""
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in files:
            path = Path(directory) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                yield path


def _stat(path: object) -> tuple[int, int]:
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns


def _read_arrays(path: Path) -> tuple[dict[str | None, np.ndarray], dict[str | None, np.ndarray]]:
    """{split: images} ({None: images} for one array to split by --test-fraction) and the labels given."""
    try:
        if path.suffix.lower() == ".npy":
            return {None: np.load(path, mmap_mode="r", allow_pickle=False)}, {}
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise VaelabError(f"cannot read {path} as a numpy array ({error}); save it with numpy.save/savez") from None
    keys = set(archive.files)
    if {"train", "test"} <= keys:
        labels = {s: archive[f"{s}_labels"] for s in ("train", "test") if f"{s}_labels" in keys}
        return {"train": archive["train"], "test": archive["test"]}, labels
    for name in ("images", "x"):
        if name in keys:
            label_key = next((key for key in ("labels", "y") if key in keys), None)
            return {None: archive[name]}, ({None: archive[label_key]} if label_key else {})
    if len(keys) == 1:
        return {None: archive[next(iter(keys))]}, {}
    raise VaelabError(
        f"{path} holds {', '.join(sorted(keys))}: name the arrays train and test (and train_labels, test_labels), "
        "or give one array named images (and labels)"
    )


def _check_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise VaelabError(
            f"{where}: the images are {array.dtype}, but uint8 pixels 0..255 are expected; convert with "
            "(x * 255).round().astype(numpy.uint8) for values in [0, 1]"
        )
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3)):
        raise VaelabError(
            f"{where}: shape {tuple(array.shape)}, but (N, H, W) grey or (N, H, W, C) with C = 1 or 3 is expected; "
            "drop an alpha channel and reshape"
        )
    if array.shape[0] == 0:
        raise VaelabError(f"{where}: no images (shape {tuple(array.shape)}); give at least one")
    return array


def _channels_of(array: np.ndarray) -> int:
    return 1 if array.ndim == 3 else int(array.shape[3])


# ---------------------------------------------------------------------------------------------
# Decoding one image, with the refusals of what cannot be read as 8-bit pixels.


def _open(path: object, name: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise VaelabError(f"{name}: not a readable PNG/JPEG ({error}); replace or remove the file") from None


def _decode(data: bytes, name: str):
    """Pillow image of `data`, fully decoded, so that a truncated file fails here, with its name."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise VaelabError(f"{name}: corrupt or truncated image ({error}); replace or remove the file") from None
    _check_mode(image.mode, name)
    return image


def _check_mode(mode: str, name: str) -> None:
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise VaelabError(
            f"{name}: a {'16' if mode.startswith('I;16') else '32'}-bit image (mode {mode}); vaelab reads 8-bit "
            "pixels: convert it to 8-bit grey or RGB first"
        )
    if mode == "CMYK":
        raise VaelabError(f"{name}: a CMYK image; convert it to RGB first (e.g. PIL: image.convert('RGB'))")
    if mode not in GREY_MODES + COLOUR_MODES:
        raise VaelabError(f"{name}: pixel mode {mode} is not 8-bit grey or colour; convert it to L or RGB")


def _pixels(image, channels: int, image_size: int) -> np.ndarray:
    """An image as uint8 (C, H, W): grey or RGB, the shorter side resized to image_size and centre-cropped."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image_size:
        width, height = image.size
        scale = image_size / min(width, height)
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------
# The conversion.


def _convert(source: _FolderSource | _ArraySource, directory: Path, settings: dict, progress: bool) -> Converted:
    image_size, test_fraction, seed = settings["image_size"], settings["test_fraction"], settings["seed"]
    items = source.items
    # --- one pass over the headers: sizes, modes, refusals, before anything is written -----------
    sizes: dict[tuple[int, int], str] = {}
    colour = False
    for item in tqdm(items, desc="checking images", unit="image", disable=not progress, leave=False, mininterval=1.0):
        size, mode = source.header(item)
        _check_mode(mode, item.name)
        colour = colour or mode in COLOUR_MODES
        sizes.setdefault(size, item.name)
        if len(sizes) > 1 and not image_size:
            (a, first), (b, second) = list(sizes.items())[:2]
            raise VaelabError(
                f"the images differ in size: {first} is {a[0]}x{a[1]}, {second} is {b[0]}x{b[1]}; pass --image-size S "
                "to resize the shorter side to S and centre-crop S x S"
            )
    channels = 3 if colour else 1
    width, height = (image_size, image_size) if image_size else next(iter(sizes))
    # --- which image goes where -------------------------------------------------------------------
    if source.presplit:
        splits = [item.split for item in items]
        if "train" not in splits or "test" not in splits:
            raise VaelabError("train/ and test/ must each hold at least one image; add images or remove the folders")
    else:
        if not test_fraction:
            raise VaelabError(
                f"{len(items)} images with no train/test split: pass --test-fraction F (e.g. 0.1) or make train/ and "
                "test/ subfolders"
            )
        n_test = max(1, round(test_fraction * len(items)))
        if n_test >= len(items):
            raise VaelabError(f"--test-fraction {test_fraction} leaves no training images of {len(items)}; lower it")
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
        test = set(order[:n_test].tolist())
        splits = ["test" if i in test else "train" for i in range(len(items))]
    counts = {name: splits.count(name) for name in ("train", "test")}
    # --- stream every image into the memory-mapped outputs --------------------------------------
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaelabError(f"cannot write the cache {directory} ({error.strerror}); set VAELAB_DATA to a writable dir")
    (directory / META_NAME).unlink(missing_ok=True)
    shape = (channels, height, width)
    temporary = {name: directory / f".{name}.{os.getpid()}.npy" for name in ("train", "test")}
    outputs = {
        name: np.lib.format.open_memmap(temporary[name], mode="w+", dtype=np.uint8, shape=(counts[name], *shape))
        for name in ("train", "test")
    }
    labels = {name: np.empty(counts[name], dtype=np.int64) for name in ("train", "test")}
    filled = {"train": 0, "test": 0}
    source_hash = hashlib.sha256()
    bar = tqdm(items, desc=f"converting {source_name(source)}", unit="image", disable=not progress, mininterval=1.0)
    try:
        for item, split in zip(bar, splits):
            data, image = source.read(item)
            source_hash.update(item.name.encode() + b"\0" + hashlib.sha256(data).digest())
            with image:
                pixels = _pixels(image, channels, image_size)
            outputs[split][filled[split]] = pixels
            labels[split][filled[split]] = item.label
            filled[split] += 1
        for output in outputs.values():
            output.flush()
        del outputs
        for name in ("train", "test"):
            os.replace(temporary[name], directory / f"{name}.npy")
            buffer = io.BytesIO()
            np.save(buffer, labels[name])
            atomic_write(directory / f"{name}_labels.npy", buffer.getvalue(), what="label cache")
    finally:
        bar.close()
        for path in temporary.values():
            path.unlink(missing_ok=True)
    meta = {
        "source": str(getattr(source, "root", getattr(source, "path", ""))),
        "kind": "folder" if isinstance(source, _FolderSource) else "array",
        "shape": list(shape),
        "channels": channels,
        "train": counts["train"],
        "test": counts["test"],
        "classes": list(source.classes),
        "source_digest": source_hash.hexdigest(),
        "cache_digest": _arrays_sha256(directory),
        **settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(directory / META_NAME, json.dumps(meta, indent=2) + "\n", what="cache description")
    return read_converted(directory)


def source_name(source: _FolderSource | _ArraySource) -> str:
    return str(getattr(source, "root", getattr(source, "path", "")))


def _arrays_sha256(directory: Path) -> str:
    """SHA-256 over the bytes of train.npy then test.npy (headers included), read in chunks."""
    digest = hashlib.sha256()
    for name in ("train.npy", "test.npy"):
        with open(directory / name, "rb") as file:
            for block in iter(lambda: file.read(_HASH_CHUNK), b""):
                digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def image_shape(images: torch.Tensor) -> tuple[int, int, int]:
    """(C, H, W) of stored images: (N, H, W) grey, or (N, C, H, W)."""
    if images.dim() == 3:
        return (1, int(images.shape[1]), int(images.shape[2]))
    return tuple(int(n) for n in images.shape[1:])  # type: ignore[return-value]


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, [C,] H, W) images -> (N, C, S, S): the shorter side resized to S, centre-cropped (as folders are)."""
    from PIL import Image

    channels = image_shape(images)[0]
    out = np.empty((images.shape[0], channels, image_size, image_size), dtype=np.uint8)
    for i in range(images.shape[0]):
        array = images[i].numpy()
        array = array if array.ndim == 2 else (array[0] if channels == 1 else array.transpose(1, 2, 0))
        out[i] = _pixels(Image.fromarray(np.ascontiguousarray(array)), channels, image_size)
    return torch.from_numpy(out)


__all__ = ["Converted", "converted_entries", "image_shape", "load_images", "read_converted", "resize_images"]
