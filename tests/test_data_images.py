"""Users' images: folders of PNG/JPEG, .npy/.npz arrays and IDX files of any size, converted once into a
memory-mapped uint8 cache; each bad input refused in one line. Every test makes its own files."""

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import data
from vaelab.data import images as image_source
from vaelab.data import pixels, write_idx
from vaelab.errors import VaelabError


def _png_folder(root, arrays_by_class, subdir=""):
    """Write arrays (H, W) or (H, W, 3) uint8 as PNG files root/subdir/<class>/<i>.png; return root."""
    for name, arrays in arrays_by_class.items():
        directory = root / subdir / name if name else root / subdir
        directory.mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(directory / f"{i:04d}.png")
    return root


def _random(n, shape, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8))


def _mapped_file(tensor):
    """The file whose memory mapping holds the tensor's data (Linux /proc/self/maps), or None."""
    from pathlib import Path

    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(value, 16) for value in fields[0].split("-"))
        if low <= address < high and len(fields) >= 6:
            return Path(fields[5])
    return None


def _load(name, path, tmp_path, **options):
    return data.load_dataset(name, path, cache_dir=tmp_path / "cache", progress=False, **options)


def test_a_colour_folder_round_trips_channel_first_with_class_labels_and_a_seeded_split(tmp_path):
    cats, dogs = _random(6, (5, 7, 3), seed=1), _random(4, (5, 7, 3), seed=2)
    root = _png_folder(tmp_path / "pets", {"cats": cats, "dogs": dogs})
    dataset = _load("folder", root, tmp_path, test_fraction=0.3, seed=4)
    assert dataset.classes == ("cats", "dogs") and dataset.image_shape == (3, 5, 7)
    assert dataset.train.images.dtype == torch.uint8 and dataset.train.images.shape[1:] == (3, 5, 7)
    assert len(dataset.train.images) == 7 and len(dataset.test.images) == 3  # round(0.3 * 10) held out
    # every image comes back exactly (PNG is lossless), in (C, H, W) order, with its class's label
    expected = {
        array.transpose(2, 0, 1).tobytes(): label for label, group in enumerate((cats, dogs)) for array in group
    }
    seen = []
    for split in (dataset.train, dataset.test):
        for image, label in zip(split.images.numpy(), split.labels.tolist()):
            assert expected[image.tobytes()] == label
            seen.append(image.tobytes())
    assert sorted(seen) == sorted(expected)  # disjoint splits that cover the folder
    again = _load("folder", root, tmp_path / "other", test_fraction=0.3, seed=4)
    assert torch.equal(again.test.images, dataset.test.images)  # the split is the seed's
    moved = _load("folder", root, tmp_path / "third", test_fraction=0.3, seed=5)
    assert not torch.equal(moved.test.images, dataset.test.images)
    # pixels() flattens channel first, the layout the convolutional networks read back
    flat = pixels(dataset.train.images[:2])
    assert flat.shape == (2, 105) and torch.equal(flat.reshape(2, 3, 5, 7), dataset.train.images[:2].float() / 255)


def test_train_and_test_subfolders_are_the_splits_and_grey_stays_one_channel(tmp_path):
    root = tmp_path / "digits"
    _png_folder(root, {"a": _random(3, (4, 4)), "b": _random(2, (4, 4), 1)}, subdir="train")
    _png_folder(root, {"b": _random(2, (4, 4), 2)}, subdir="test")
    dataset = _load("folder", root, tmp_path)
    assert dataset.image_shape == (1, 4, 4) and dataset.classes == ("a", "b")
    assert dataset.train.labels.tolist() == [0, 0, 0, 1, 1] and dataset.test.labels.tolist() == [1, 1]


def test_the_cache_is_memory_mapped_reused_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    root = _png_folder(tmp_path / "set", {"": _random(5, (6, 6, 3))})
    first = _load("folder", root, tmp_path, test_fraction=0.2)
    assert _mapped_file(first.train.images).name == "train.npy"  # the tensor's memory is the cache file's pages
    meta = data.converted(tmp_path / "cache")
    assert len(meta) == 1 and meta[0]["cache_digest"] == first.cache_digest and meta[0]["shape"] == [3, 6, 6]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(image_source, "_decode", no_decoding)
    second = _load("folder", root, tmp_path, test_fraction=0.2)  # from the cache: nothing decoded
    assert second.cache_digest == first.cache_digest and torch.equal(second.train.images, first.train.images)
    monkeypatch.undo()
    Image.fromarray(_random(1, (6, 6, 3), 9)[0]).save(root / "new.png")
    third = _load("folder", root, tmp_path, test_fraction=0.2)
    assert len(third.train.images) + len(third.test.images) == 6 and third.source_digest != first.source_digest


def test_image_size_resizes_the_shorter_side_and_centre_crops_as_pillow_does(tmp_path):
    wide = np.random.default_rng(3).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    tall = np.random.default_rng(4).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    root = _png_folder(tmp_path / "mixed", {"": [wide, tall]})
    dataset = _load("folder", root, tmp_path, image_size=6, test_fraction=0.5, seed=0)
    assert dataset.image_shape == (3, 6, 6)
    reference = Image.fromarray(wide).resize((12, 6), Image.Resampling.BILINEAR, reducing_gap=None).crop((3, 0, 9, 6))
    images = torch.cat([dataset.train.images, dataset.test.images]).numpy()
    assert any(np.array_equal(image, np.asarray(reference).transpose(2, 0, 1)) for image in images)


def test_arrays_npy_and_npz_with_their_labels(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (10, 5, 6), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    dataset = _load("array", tmp_path / "grey.npy", tmp_path, test_fraction=0.2)
    assert dataset.image_shape == (1, 5, 6)
    stored = torch.cat([dataset.train.images, dataset.test.images])[:, 0].numpy()
    assert sorted(map(bytes, stored)) == sorted(map(bytes, grey))
    colour = np.random.default_rng(1).integers(0, 256, (4, 3, 2, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", train=colour[:3], test=colour[3:], train_labels=np.array([2, 0, 1]))
    dataset = _load("array", tmp_path / "c.npz", tmp_path)
    assert torch.equal(dataset.train.images, torch.from_numpy(colour[:3].transpose(0, 3, 1, 2).copy()))
    assert dataset.train.labels.tolist() == [2, 0, 1] and dataset.test.labels.tolist() == [0]


def test_idx_files_of_any_size(tmp_path):
    images = torch.randint(0, 256, (6, 9, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images[:4])
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:4])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[4:])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[4:])
    dataset = _load("idx", tmp_path, tmp_path)
    assert dataset.image_shape == (1, 9, 11) and torch.equal(dataset.train.images, images[:4])
    resized = _load("idx", tmp_path, tmp_path, image_size=5)
    assert resized.image_shape == (1, 5, 5)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: root.mkdir(), "no images in"),
        (lambda root: _png_folder(root, {"": [*_random(1, (4, 4)), *_random(1, (5, 4))]}), "differ in size"),
        (lambda root: _png_folder(root, {"": _random(2, (4, 4))}), "pass --test-fraction"),
    ],
    ids=["empty", "mixed-sizes", "no-split"],
)
def test_bad_folders_are_refused_in_one_line(tmp_path, make, match):
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(VaelabError, match=match) as error:
        _load("folder", root, tmp_path)
    assert "\n" not in str(error.value)


def test_corrupt_16_bit_and_cmyk_images_are_named_and_refused(tmp_path):
    good = _random(3, (4, 4))
    cases = {}
    root = _png_folder(tmp_path / "truncated", {"": good})
    payload = (root / "0000.png").read_bytes()
    (root / "0001.png").write_bytes(payload[: len(payload) // 2])
    cases["truncated"] = (root, "0001.png")
    root = _png_folder(tmp_path / "sixteen", {"": good})
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(root / "deep.png")
    cases["sixteen"] = (root, "16-bit")
    root = _png_folder(tmp_path / "cmyk", {"": good})
    Image.new("CMYK", (4, 4), (10, 20, 30, 40)).save(root / "print.jpg")
    cases["cmyk"] = (root, "CMYK")
    for name, (root, match) in cases.items():
        with pytest.raises(VaelabError, match=match):
            _load("folder", root, tmp_path, test_fraction=0.5)
        # nothing half-written is trusted later: no finished cache entry was left behind
        assert all(entry.get("source") != str(root.resolve()) for entry in data.converted(tmp_path / "cache"))


def test_float_or_wrong_rank_arrays_are_refused(tmp_path):
    np.save(tmp_path / "floats.npy", np.random.default_rng(0).random((4, 5, 5)).astype(np.float32))
    with pytest.raises(VaelabError, match=r"uint8 pixels 0\.\.255 are expected.*astype"):
        _load("array", tmp_path / "floats.npy", tmp_path, test_fraction=0.5)
    np.savez(tmp_path / "flat.npz", images=np.zeros((4, 25), dtype=np.uint8))
    with pytest.raises(VaelabError, match=r"shape \(4, 25\)"):
        _load("array", tmp_path / "flat.npz", tmp_path, test_fraction=0.5)


def test_a_symlink_loop_neither_hangs_nor_crashes(tmp_path):
    root = _png_folder(tmp_path / "looped", {"a": _random(2, (3, 3)), "b": _random(2, (3, 3), 1)})
    os.symlink(root, root / "a" / "loop")  # a directory link back to the top
    os.symlink(root / "b" / "0000.png", root / "b" / "linked.png")  # a linked file is read
    dataset = _load("folder", root, tmp_path, test_fraction=0.4)
    assert len(dataset.train.images) + len(dataset.test.images) == 5


def _convert_in_child(root, cache, count):
    """Convert a folder in a fresh process; return its peak RSS in MiB and the number of images converted."""
    script = (
        "import resource, sys; from vaelab import data; "
        f"d = data.load_dataset('folder', {str(root)!r}, cache_dir={str(cache)!r}, test_fraction=0.1, progress=False); "
        "print(len(d.train.images) + len(d.test.images), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800, check=True)
    images, rss = map(int, done.stdout.split())
    assert images == count
    return rss


def _tiny_files(root, count):
    import io

    root.mkdir()
    buffer = io.BytesIO()
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).save(buffer, format="PNG")
    payload = buffer.getvalue()
    for i in range(count):
        (root / f"{i:06d}.png").write_bytes(payload)


def test_the_conversion_keeps_memory_flat_in_the_number_of_files(tmp_path):
    """Peak memory of converting 100 and 1000 files differs by far less than holding every decoded image would."""
    for count in (100, 1000):
        _tiny_files(tmp_path / f"n{count}", count)
    small = _convert_in_child(tmp_path / "n100", tmp_path / "c1", 100)
    large = _convert_in_child(tmp_path / "n1000", tmp_path / "c2", 1000)
    assert large - small < 40, (small, large)


@pytest.mark.slow
def test_a_hundred_thousand_tiny_files(tmp_path):
    _tiny_files(tmp_path / "many", 100_000)
    converting = _convert_in_child(tmp_path / "many", tmp_path / "cache", 100_000)
    cached = _convert_in_child(tmp_path / "many", tmp_path / "cache", 100_000)  # from the cache: no decoding at all
    print(f"peak RSS: converting 100 000 files {converting} MiB, loading them from the cache {cached} MiB")
    assert converting < cached + 100, (converting, cached)


def test_data_info_describes_a_folder(tmp_path, capsys):
    from conftest import run_ok

    root = _png_folder(tmp_path / "pets", {"cats": _random(3, (5, 7, 3)), "dogs": _random(2, (5, 7, 3))})
    os.environ["VAELAB_DATA"] = str(tmp_path / "cache")
    try:
        out = run_ok(["data", "info", "--dataset", "folder", "--data-dir", str(root), "--test-fraction", "0.2"], capsys)
        assert "3 x 5 x 7" in out and "4 train, 1 test" in out and "cats, dogs" in out and "cache    sha256" in out
        out = run_ok(["data", "info"], capsys)
        assert "converted images (1)" in out and str(root.resolve()) in out
    finally:
        del os.environ["VAELAB_DATA"]
    meta = json.loads(next((tmp_path / "cache" / "converted").glob("*/meta.json")).read_text())
    assert meta["classes"] == ["cats", "dogs"] and len(meta["cache_digest"]) == 64
    _ = resource  # the memory tests read ru_maxrss in their child processes
