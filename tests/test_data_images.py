"""Users' images: folders of PNG/JPEG, .npy/.npz arrays and IDX files of any size, converted once into a
memory-mapped uint8 cache (N, C, H, W); each bad input refused in one line, nothing saved lost. Every
test makes its own files in tmp_path and its own cache there; nothing is downloaded."""

import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_ok
from PIL import Image

from vaelab import data
from vaelab.config import TrainConfig
from vaelab.data import Dataset, Split, pixels, write_idx
from vaelab.data import images as image_source
from vaelab.errors import VaelabError


def _png_folder(root, arrays_by_class, subdir=""):
    """Write arrays (H, W) or (H, W, C) uint8 as root/subdir/<class>/<i>.png ("" class: in the folder); return root."""
    for name, arrays in arrays_by_class.items():
        directory = root / subdir / name
        directory.mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(directory / f"{i:04d}.png")
    return root


def _random(n, shape, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8))


def _load(name, path, tmp_path, **options):
    return data.load_dataset(name, path, cache_dir=tmp_path / "cache", progress=False, **options)


def _entries(tmp_path):
    return sorted((tmp_path / "cache" / "converted").glob("*"))


def _all_images(dataset):
    return torch.cat([dataset.train.images, dataset.test.images]).numpy()


def _mapped_file(tensor):
    """The file whose memory mapping holds the tensor's data (Linux /proc/self/maps), or None."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(value, 16) for value in fields[0].split("-"))
        if low <= address < high and len(fields) >= 6:
            return Path(fields[5])
    return None


def _files_digest(directory):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


# ------------------------------------------------------------------------------------------ folders


def test_a_colour_folder_round_trips_channel_first_with_class_labels_and_a_seeded_split(tmp_path):
    cats, dogs = _random(6, (5, 7, 3), seed=1), _random(4, (5, 7, 3), seed=2)
    root = _png_folder(tmp_path / "pets", {"cats": cats, "dogs": dogs})
    dataset = _load("folder", root, tmp_path, test_fraction=0.3, seed=4)
    assert dataset.classes == ("cats", "dogs") and dataset.image_shape == (3, 5, 7)
    assert dataset.train.images.dtype == torch.uint8 and dataset.train.labels.dtype == torch.int64
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


def test_train_and_test_subfolders_are_the_splits_with_the_union_of_class_names(tmp_path):
    root = tmp_path / "digits"
    train_a, train_b, test_c = _random(3, (4, 4)), _random(2, (4, 4), 1), _random(2, (4, 4), 2)
    _png_folder(root, {"a": train_a, "b": train_b}, subdir="train")
    _png_folder(root, {"c": test_c}, subdir="test")
    dataset = _load("folder", root, tmp_path, test_fraction=0.5, seed=3)  # a given split ignores the fraction
    assert dataset.image_shape == (1, 4, 4) and dataset.classes == ("a", "b", "c")
    assert dataset.train.labels.tolist() == [0, 0, 0, 1, 1] and dataset.test.labels.tolist() == [2, 2]
    assert np.array_equal(dataset.test.images[:, 0].numpy(), np.stack(test_c))
    same = _load("folder", root, tmp_path, seed=9)  # nor does the seed: the same cache entry serves both
    assert same.cache_digest == dataset.cache_digest and len(_entries(tmp_path)) == 1


def test_each_image_carries_its_file_relative_to_the_folder_through_every_split(tmp_path):
    root = _png_folder(tmp_path / "pets", {"cats": _random(5, (4, 6), 1), 'dogs, "big"': _random(4, (4, 6), 2)})
    dataset = _load("folder", root, tmp_path, test_fraction=0.3, seed=4)
    assert sorted(dataset.train.names + dataset.test.names) == sorted(
        path.relative_to(root).as_posix() for path in root.rglob("*.png")
    )
    for split in (dataset.train, dataset.test):  # image i is the pixels of file i
        assert len(split.names) == len(split.images)
        for image, name in zip(split.images.numpy(), split.names):
            assert np.array_equal(image[0], np.asarray(Image.open(root / name)))
    given = _png_folder(tmp_path / "given", {"a": _random(2, (4, 4))}, subdir="train")
    _png_folder(given, {"b": _random(1, (4, 4), 3)}, subdir="test")
    split = _load("folder", given, tmp_path)
    assert split.train.names == ("train/a/0000.png", "train/a/0001.png") and split.test.names == ("test/b/0000.png",)
    np.save(tmp_path / "images.npy", np.stack(_random(4, (4, 4))))
    array = _load("array", tmp_path / "images.npy", tmp_path, test_fraction=0.25)
    assert array.train.names is None and array.test.names is None  # an array's images have no files


def test_grey_stays_one_channel_and_one_colour_image_makes_all_rgb_with_alpha_dropped(tmp_path):
    grey = _random(3, (4, 4))
    root = _png_folder(tmp_path / "grey", {"": grey})
    Image.fromarray(np.eye(4, dtype=bool)).save(root / "bits.png")  # mode "1": grey, 0 or 255
    dataset = _load("folder", root, tmp_path, test_fraction=0.25)
    assert dataset.image_shape == (1, 4, 4)
    assert any(np.array_equal(image[0], np.eye(4, dtype=np.uint8) * 255) for image in _all_images(dataset))
    rgba = np.random.default_rng(5).integers(0, 256, (4, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    dataset = _load("folder", root, tmp_path, test_fraction=0.25)
    images = _all_images(dataset)
    assert dataset.image_shape == (3, 4, 4)
    assert any(np.array_equal(image, rgba[..., :3].transpose(2, 0, 1)) for image in images)  # alpha dropped
    assert any(np.array_equal(image, np.stack([grey[0]] * 3)) for image in images)  # grey repeated in R, G, B


def test_image_size_resizes_the_shorter_side_and_centre_crops_as_pillow_does(tmp_path):
    wide = np.random.default_rng(3).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    tall = np.random.default_rng(4).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    root = _png_folder(tmp_path / "mixed", {"": [wide, tall]})
    dataset = _load("folder", root, tmp_path, image_size=6, test_fraction=0.5, seed=0)
    assert dataset.image_shape == (3, 6, 6)
    bilinear = Image.Resampling.BILINEAR
    wide_6 = Image.fromarray(wide).resize((12, 6), bilinear, reducing_gap=None).crop((3, 0, 9, 6))
    tall_6 = Image.fromarray(tall).resize((6, 12), bilinear, reducing_gap=None).crop((0, 3, 6, 9))
    images = _all_images(dataset)
    for reference in (wide_6, tall_6):
        assert any(np.array_equal(image, np.asarray(reference).transpose(2, 0, 1)) for image in images)


def test_jpeg_files_of_any_suffix_case_are_read(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    flat = np.full((8, 8, 3), (200, 40, 90), dtype=np.uint8)
    Image.fromarray(flat).save(root / "a.JPG", quality=95)
    Image.fromarray(flat).save(root / "b.jpeg", quality=95)
    Image.fromarray(flat).save(root / "c.Png")
    (root / "notes.txt").write_text("not an image")
    dataset = _load("folder", root, tmp_path, test_fraction=0.3)
    assert len(_all_images(dataset)) == 3
    assert np.abs(_all_images(dataset).astype(int) - flat.transpose(2, 0, 1)).max() <= 3  # JPEG: nearly flat


# ------------------------------------------------------------------------------------------ the cache


def test_the_cache_is_memory_mapped_reused_without_reading_the_source_and_rebuilt_when_it_changes(
    tmp_path, monkeypatch
):
    root = _png_folder(tmp_path / "set", {"": _random(5, (6, 6, 3))})
    first = _load("folder", root, tmp_path, test_fraction=0.2)
    assert _mapped_file(first.train.images).name == "train.npy"  # the tensor's memory is the cache file's pages
    assert _mapped_file(first.test.images).name == "test.npy"

    def no_source(*args, **kwargs):
        raise AssertionError("the source images were opened again")

    with monkeypatch.context() as patched:
        patched.setattr(Image, "open", no_source)
        patched.setattr(image_source, "_read_file", no_source)
        second = _load("folder", root, tmp_path, test_fraction=0.2)  # from the cache: no image opened
    assert second.cache_digest == first.cache_digest and torch.equal(second.train.images, first.train.images)
    changed = root / "0002.png"
    Image.fromarray(_random(1, (6, 6, 3), 9)[0]).save(changed)
    os.utime(changed, ns=(1, 1))  # a distinct mtime, whatever the clock's resolution
    third = _load("folder", root, tmp_path, test_fraction=0.2)
    assert third.source_digest != first.source_digest and third.cache_digest != first.cache_digest
    Image.fromarray(_random(1, (6, 6, 3), 10)[0]).save(root / "new.png")
    fourth = _load("folder", root, tmp_path, test_fraction=0.2)
    assert len(_all_images(fourth)) == 6 and len(_entries(tmp_path)) == 3


def test_digests_are_recorded_reproducible_and_stable(tmp_path):
    root = _png_folder(tmp_path / "set", {"x": _random(3, (4, 5)), "y": _random(2, (4, 5), 1)})
    dataset = _load("folder", root, tmp_path, test_fraction=0.4, seed=2)
    # source_digest: SHA-256 over "relative path NUL SHA-256(bytes)" of each file, in sorted order
    expected = hashlib.sha256()
    for path in sorted(root.rglob("*.png"), key=lambda p: p.relative_to(root).as_posix()):
        expected.update(path.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    assert dataset.source_digest == expected.hexdigest()
    (entry,) = _entries(tmp_path)
    cache_bytes = (entry / "train.npy").read_bytes() + (entry / "test.npy").read_bytes()
    assert dataset.cache_digest == hashlib.sha256(cache_bytes).hexdigest()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["source"] == str(root.resolve()) and meta["shape"] == [1, 4, 5] and meta["channels"] == 1
    assert (meta["train"], meta["test"], meta["classes"]) == (3, 2, ["x", "y"])
    assert (meta["image_size"], meta["test_fraction"], meta["seed"]) == (0, 0.4, 2) and meta["created"]
    assert meta["source_digest"] == dataset.source_digest and meta["cache_digest"] == dataset.cache_digest
    elsewhere = _load("folder", root, tmp_path / "elsewhere", test_fraction=0.4, seed=2)
    assert (elsewhere.source_digest, elsewhere.cache_digest) == (dataset.source_digest, dataset.cache_digest)
    listed = data.converted(tmp_path / "cache")
    assert [item["cache_digest"] for item in listed] == [dataset.cache_digest] and listed[0]["bytes"] > 0
    info = [item for item in data.info(tmp_path / "cache") if "converted" in item]
    assert len(info) == 1 and info[0]["dataset"] == "folder" and info[0]["converted"]["shape"] == [1, 4, 5]


def test_an_unfinished_or_damaged_entry_is_converted_again(tmp_path):
    root = _png_folder(tmp_path / "set", {"": _random(4, (3, 3))})
    first = _load("folder", root, tmp_path, test_fraction=0.25)
    (entry,) = _entries(tmp_path)
    (entry / "meta.json").unlink()  # meta.json is written last: without it the entry is not trusted
    assert data.converted(tmp_path / "cache")[0]["problem"].startswith("unfinished")
    again = _load("folder", root, tmp_path, test_fraction=0.25)
    assert again.cache_digest == first.cache_digest and (entry / "meta.json").is_file()
    del first, again  # unmap before damaging the file under them
    (entry / "train.npy").write_bytes((entry / "train.npy").read_bytes()[:-5])
    rebuilt = _load("folder", root, tmp_path, test_fraction=0.25)
    assert len(rebuilt.train.images) == 3


def test_a_failed_conversion_leaves_nothing_and_spares_other_entries(tmp_path, monkeypatch):
    good = _png_folder(tmp_path / "good", {"": _random(4, (3, 3))})
    _load("folder", good, tmp_path, test_fraction=0.25)
    (kept,) = _entries(tmp_path)
    before = _files_digest(kept)
    other = _png_folder(tmp_path / "other", {"": _random(50, (3, 3), 1)})
    decode, calls = image_source._decode, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing
        return decode(*args)

    monkeypatch.setattr(image_source, "_decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _load("folder", other, tmp_path, test_fraction=0.25)
    assert _entries(tmp_path) == [kept] and _files_digest(kept) == before
    monkeypatch.undo()
    assert len(_all_images(_load("folder", other, tmp_path, test_fraction=0.25))) == 50


def test_the_progress_bar_names_the_folder(tmp_path, capsys):
    root = _png_folder(tmp_path / "set", {"": _random(3, (3, 3))})
    data.load_dataset("folder", root, cache_dir=tmp_path / "cache", test_fraction=0.3)
    assert f"converting {root.resolve()}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ arrays and IDX


def test_an_npy_is_read_memory_mapped_split_by_the_seed_and_channel_first(tmp_path, monkeypatch):
    grey = np.random.default_rng(0).integers(0, 256, (10, 5, 6), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    modes, load = [], np.load

    def spy(path, *args, **kwargs):
        modes.append((Path(path).name, kwargs.get("mmap_mode")))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    dataset = _load("array", tmp_path / "grey.npy", tmp_path, test_fraction=0.2)
    monkeypatch.undo()
    assert {mode for name, mode in modes if name == "grey.npy"} == {"r"}  # the source is never read whole
    assert dataset.image_shape == (1, 5, 6) and len(dataset.test.images) == 2
    assert sorted(map(bytes, _all_images(dataset)[:, 0])) == sorted(map(bytes, grey))
    assert dataset.source_digest == hashlib.sha256((tmp_path / "grey.npy").read_bytes()).hexdigest()
    colour = np.random.default_rng(1).integers(0, 256, (4, 3, 2, 3), dtype=np.uint8)
    np.save(tmp_path / "colour.npy", colour)
    dataset = _load("array", tmp_path / "colour.npy", tmp_path, test_fraction=0.25)
    assert dataset.image_shape == (3, 3, 2)
    assert sorted(map(bytes, _all_images(dataset))) == sorted(map(bytes, colour.transpose(0, 3, 1, 2)))


def test_npz_layouts_train_test_images_labels_x_y_and_one_array(tmp_path):
    colour = np.random.default_rng(1).integers(0, 256, (4, 3, 2, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", train=colour[:3], test=colour[3:], train_labels=[2, 0, 1], test_labels=[5])
    dataset = _load("array", tmp_path / "c.npz", tmp_path)
    assert torch.equal(dataset.train.images, torch.from_numpy(colour[:3].transpose(0, 3, 1, 2).copy()))
    assert dataset.train.labels.tolist() == [2, 0, 1] and dataset.test.labels.tolist() == [5]
    np.savez(tmp_path / "sizes.npz", train=colour[:3], test=np.zeros((2, 6, 4, 3), np.uint8))
    assert _load("array", tmp_path / "sizes.npz", tmp_path, image_size=2).image_shape == (3, 2, 2)
    grey = np.random.default_rng(2).integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)  # (N, H, W, 1) is grey
    for name, arrays in {
        "images": {"images": grey, "labels": np.arange(6)},
        "xy": {"x": grey, "y": np.arange(6)},
        "one": {"pictures": grey},
    }.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        dataset = _load("array", tmp_path / f"{name}.npz", tmp_path, test_fraction=0.5, seed=1)
        assert dataset.image_shape == (1, 4, 4)
        for split in (dataset.train, dataset.test):  # each image keeps its own label
            expected = split.labels.numpy() if name != "one" else None
            indices = [next(i for i in range(6) if np.array_equal(grey[i, ..., 0], image[0])) for image in split.images]
            assert expected is None or indices == expected.tolist()


def test_an_array_cache_is_reused_without_converting_again(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((4, 3, 3), dtype=np.uint8))
    first = _load("array", tmp_path / "a.npy", tmp_path, test_fraction=0.25)
    monkeypatch.setattr(image_source._ArraySource, "convert", lambda *a: pytest.fail("converted again"))
    assert _load("array", tmp_path / "a.npy", tmp_path, test_fraction=0.25).cache_digest == first.cache_digest


def test_idx_files_of_any_size_with_more_than_ten_classes(tmp_path):
    images = torch.randint(0, 256, (6, 9, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 46, 0, 1, 46], dtype=torch.uint8)  # EMNIST-like: 47 classes
    write_idx(tmp_path / "train-images-idx3-ubyte", images[:4])
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:4])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[4:])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[4:])
    dataset = _load("idx", tmp_path, tmp_path)
    assert dataset.image_shape == (1, 9, 11) and torch.equal(dataset.train.images, images[:4])
    assert dataset.train.labels.tolist() == [0, 1, 46, 0] and len(dataset.source_digest) == 64
    resized = _load("idx", tmp_path, tmp_path, image_size=5)
    assert resized.train.images.shape == (4, 1, 5, 5)
    reference = Image.fromarray(images[0].numpy()).resize((6, 5), Image.Resampling.BILINEAR, reducing_gap=None)
    assert np.array_equal(resized.train.images[0, 0].numpy(), np.asarray(reference.crop((0, 0, 5, 5))))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[4:, :8, :8])  # test images of another size
    with pytest.raises(VaelabError, match=r"training images are 11x9, test images 8x8 .*pass --image-size S"):
        _load("idx", tmp_path, tmp_path)
    assert _load("idx", tmp_path, tmp_path, image_size=4).image_shape == (1, 4, 4)


def test_pixels_flattens_channel_first_from_memory_mapped_slices_and_gathers(tmp_path):
    colour = np.random.default_rng(1).integers(0, 256, (6, 2, 3, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", colour)
    dataset = _load("array", tmp_path / "c.npy", tmp_path, test_fraction=0.5)
    images = dataset.train.images
    for batch in (images[:2], images[torch.tensor([2, 0])]):
        flat = pixels(batch)
        assert flat.dtype == torch.float32 and flat.shape == (2, 18)
        assert batch.shape[1:] == (3, 2, 3) and torch.equal(flat.reshape(2, 3, 2, 3), batch.float() / 255)
    assert pixels(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 784)  # MNIST's, as before


def test_datasets_built_without_the_new_fields_still_work():
    split = Split(images=torch.zeros(2, 28, 28, dtype=torch.uint8), labels=torch.zeros(2, dtype=torch.int64))
    dataset = Dataset(name="tiny", train=split, test=split, source="synthetic")
    assert dataset.image_shape == (1, 28, 28) and dataset.classes == () and dataset.cache_digest == ""


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: root.mkdir(), r"no images in .*\.png \.jpg \.jpeg files \(any case\)"),
        (lambda root: (root.mkdir(), (root / "a.gif").write_bytes(b"GIF89a")), r"no \.png \.jpg \.jpeg files"),
        (
            lambda root: _png_folder(root, {"": [*_random(1, (4, 4)), *_random(1, (5, 4))]}),
            r"differ in size: 0000\.png is 4x4, 0001\.png is 4x5 .*pass --image-size S",
        ),
        (
            lambda root: _png_folder(root, {"": _random(2, (4, 4))}),
            r"pass --test-fraction F \(e\.g\. 0\.1\) or make train/ and test/ subfolders",
        ),
        (
            lambda root: (_png_folder(root, {"a": _random(1, (4, 4))}), _png_folder(root, {"": _random(1, (4, 4))})),
            r"0000\.png lies beside the class folders \(a\)",
        ),
        (
            lambda root: (_png_folder(root, {"": _random(2, (4, 4))}, "train"), (root / "test").mkdir()),
            r"test/ holds no images",
        ),
    ],
    ids=["empty", "no-png", "mixed-sizes", "no-split", "loose-file", "empty-test"],
)
def test_bad_folders_are_refused_in_one_line(tmp_path, make, match):
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(VaelabError, match=match) as error:
        _load("folder", root, tmp_path, test_fraction=0.5 if "test-fraction" not in match else 0.0)
    assert "\n" not in str(error.value) and _entries(tmp_path) == []


def _truncated(root):
    payload = (root / "0000.png").read_bytes()
    (root / "0001.png").write_bytes(payload[: len(payload) // 2])


def _garbage(root):
    (root / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))


def _sixteen_bit(root):
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(root / "deep.png")


def _cmyk(root):
    Image.new("CMYK", (4, 4), (10, 20, 30, 40)).save(root / "print.jpg")


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (_truncated, r"0001\.png: corrupt or truncated image"),
        (_garbage, r"0001\.png: not a readable PNG/JPEG"),
        (_sixteen_bit, r"deep\.png: a 16-bit image \(mode I;16\).*convert it to 8-bit"),
        (_cmyk, r"print\.jpg: a CMYK image; convert it to RGB"),
    ],
    ids=["truncated", "garbage", "16-bit", "cmyk"],
)
def test_unreadable_images_are_named_and_refused_and_leave_no_cache(tmp_path, spoil, match):
    root = _png_folder(tmp_path / "set", {"": _random(3, (4, 4))})
    spoil(root)
    with pytest.raises(VaelabError, match=match) as error:
        _load("folder", root, tmp_path, test_fraction=0.5)
    assert "\n" not in str(error.value) and _entries(tmp_path) == []


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.random.default_rng(0).random((4, 5, 5)), r"float64, but uint8 pixels 0\.\.255 .*\(x \* 255\)\.round\(\)"),
        (np.zeros((4, 25), dtype=np.uint8), r"shape \(4, 25\), but \(N, H, W\) grey or \(N, H, W, C\) is expected"),
        (np.zeros((4, 5, 5, 4), dtype=np.uint8), r"4 channels .* 1 \(grey\) or 3 \(RGB\).*alpha"),
        (np.zeros((0, 5, 5), dtype=np.uint8), r"an empty array"),
    ],
    ids=["floats", "rank-2", "rgba", "empty"],
)
def test_bad_arrays_are_refused_in_one_line(tmp_path, array, match):
    for path in (tmp_path / "bad.npy", tmp_path / "bad.npz"):
        np.save(path, array) if path.suffix == ".npy" else np.savez(path, images=array)
        with pytest.raises(VaelabError, match=match) as error:
            _load("array", path, tmp_path, test_fraction=0.5)
        assert "\n" not in str(error.value) and _entries(tmp_path) == []


def test_bad_array_files_and_labels_are_refused(tmp_path):
    images = np.zeros((4, 3, 3), dtype=np.uint8)
    cases = {
        "half-labels.npz": ({"train": images, "test": images, "train_labels": np.arange(4)}, "labels for one split"),
        "float-labels.npz": ({"images": images, "labels": np.zeros(4)}, r"labels are float64 \(4,\).*\(4,\)"),
        "short-labels.npz": ({"images": images, "labels": np.zeros(3, dtype=int)}, r"one integer per image \(4,\)"),
        "two-names.npz": ({"a": images, "b": images}, "name the arrays train and test"),
        "sizes.npz": ({"train": images, "test": np.zeros((1, 4, 3), np.uint8)}, r"3x3, test 3x4 .*--image-size S"),
        "channels.npz": ({"train": images, "test": np.zeros((1, 3, 3, 3), np.uint8)}, r"1 channels, test 3"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(VaelabError, match=match):
            _load("array", tmp_path / name, tmp_path, test_fraction=0.5)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    for name in ("objects.npy", "junk.npy"):
        with pytest.raises(VaelabError, match="cannot read .* as numpy data"):
            _load("array", tmp_path / name, tmp_path, test_fraction=0.5)
    (tmp_path / "images.txt").write_text("0 1 2")
    with pytest.raises(VaelabError, match=r"not a \.npy or \.npz file"):
        _load("array", tmp_path / "images.txt", tmp_path)
    with pytest.raises(VaelabError, match="does not exist"):
        _load("array", tmp_path / "missing.npy", tmp_path)
    assert _entries(tmp_path) == []


def test_a_symlink_loop_neither_hangs_nor_crashes_and_a_linked_file_is_read(tmp_path):
    root = _png_folder(tmp_path / "looped", {"a": _random(2, (3, 3)), "b": _random(2, (3, 3), 1)})
    os.symlink(root, root / "a" / "loop")  # a directory link back to the top
    os.symlink(root / "b" / "0000.png", root / "b" / "linked.png")
    os.symlink(root / "missing.png", root / "b" / "dangling.png")  # points nowhere: not an image
    dataset = _load("folder", root, tmp_path, test_fraction=0.4)
    assert len(_all_images(dataset)) == 5 and dataset.classes == ("a", "b")


# ------------------------------------------------------------------------------------------ memory


def test_converting_2000_files_keeps_memory_flat(tmp_path):
    """Peak Python and numpy allocations while converting 2000 images stay well under their decoded size."""
    root = tmp_path / "many"
    root.mkdir()
    tile = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    for i in range(2000):
        tile.save(root / f"{i:05d}.png")
    decoded_bytes = 2000 * 40 * 40 * 3  # 9.6 MB, were the images held
    tracemalloc.start()
    try:
        dataset = _load("folder", root, tmp_path, test_fraction=0.1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(_all_images(dataset)) == 2000
    assert peak < decoded_bytes / 3, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.slow
def test_a_hundred_thousand_tiny_files_convert_in_flat_memory(tmp_path):
    """Converts 10^5 4x4 PNG files in a fresh process; its peak RSS grows by less than 60 MB over the imports."""
    root = tmp_path / "many"
    root.mkdir()
    tile = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4))
    for i in range(100_000):
        tile.save(root / f"{i:06d}.png")
    script = (
        "import resource, time; from vaelab import data; "
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; before = peak(); "
        f"start = time.monotonic(); d = data.load_dataset('folder', {str(root)!r}, "
        f"cache_dir={str(tmp_path / 'cache')!r}, test_fraction=0.1, progress=False); "
        "print(len(d.train.images) + len(d.test.images), before, peak(), time.monotonic() - start)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800, check=True)
    count, before, after, seconds = done.stdout.split()
    print(f"10^5 files: peak RSS {float(before):.0f} -> {float(after):.0f} MiB in {float(seconds):.0f} s")
    assert int(count) == 100_000 and float(after) - float(before) < 60, done.stdout


# ------------------------------------------------------------------------------------------ the command line


def test_data_info_describes_a_folder_and_lists_the_conversions(tmp_path, monkeypatch, capsys):
    root = _png_folder(tmp_path / "pets", {"cats": _random(3, (5, 7, 3)), "dogs": _random(2, (5, 7, 3))})
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    argv = ["data", "info", "--dataset", "folder", "--data-dir", str(root), "--test-fraction", "0.2"]
    out = run_ok([*argv, "--image-size", "4"], capsys)
    assert "3 x 4 x 4" in out and "colour" in out and "4 train, 1 test" in out and "2: cats, dogs" in out
    meta = json.loads(next((tmp_path / "cache" / "converted").glob("*/meta.json")).read_text())
    assert f"cache    sha256 {meta['cache_digest']}" in out and f"source   sha256 {meta['source_digest']}" in out
    out = run_ok(["data", "info"], capsys)
    assert "mnist" in out and "converted images (1)" in out and str(root.resolve()) in out and "3x4x4" in out
    assert "4 train + 1 test" in out and meta["cache_digest"][:16] in out


def test_a_run_records_its_data_s_digests_and_resume_refuses_other_images(tmp_path, capsys):
    from conftest import run_ok, run_refused

    root = _png_folder(tmp_path / "set", {"": _random(12, (6, 5))})
    os.environ["VAELAB_DATA"] = str(tmp_path / "cache")
    try:
        args = ["--dataset", "folder", "--data-dir", str(root), "--test-fraction", "0.25", "--no-progress"]
        run = tmp_path / "run"
        run_ok(
            [
                "train",
                *args,
                "--hidden",
                "8",
                "--latent-dim",
                "2",
                "--batch-size",
                "3",
                "--out",
                str(run),
                "--epochs",
                "1",
            ],
            capsys,
        )
        config = json.loads((run / "config.json").read_text())
        (entry,) = data.converted(tmp_path / "cache")
        assert config["data_digest"] == entry["cache_digest"] and config["source_digest"] == entry["source_digest"]
        assert config["model"]["image_shape"] == [1, 6, 5] and config["model"]["input_dim"] == 30
        Image.fromarray(_random(1, (6, 5), 7)[0]).save(root / "0003.png")  # one image changed
        run_refused(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"], capsys, "data differs")
        assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()] == ["epoch", "1"]
    finally:
        del os.environ["VAELAB_DATA"]


def test_a_test_fraction_of_one_makes_every_image_a_test_image_in_order(tmp_path):
    """The use verbs read another data set without its own split whole: test_fraction 1, every image in the test
    split in the source's order, none to train on (training itself keeps test_fraction below 1)."""
    stack = np.stack(_random(5, (4, 4), seed=7))
    np.save(tmp_path / "images.npy", stack)
    whole = _load("array", tmp_path / "images.npy", tmp_path, test_fraction=1.0)
    assert whole.train.images.shape[0] == 0
    np.testing.assert_array_equal(whole.test.images.numpy()[:, 0], stack)
    folder = _png_folder(tmp_path / "photos", {"": _random(3, (4, 4), seed=8)})
    files = _load("folder", folder, tmp_path, test_fraction=1.0).test.names
    assert files == tuple(sorted(files)) and len(files) == 3
    with pytest.raises(VaelabError, match=r"\[0, 1\)"):
        TrainConfig(test_fraction=1.0)
