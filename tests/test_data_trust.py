"""Trust what is on disk: the converted cache is verified against its digests at every read (cheaply, by a
remembered digest), meta.json's schema is checked, a conversion that cannot fit is refused before the disk is
touched, and each bad input (huge images, odd file names, lying or cut .npz files, absurd labels, unreadable
folders) is one line, never a traceback. Every test makes its own tiny files and cache in tmp_path."""

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from vaelab import data, integrity
from vaelab.data import images as image_source
from vaelab.errors import VaelabError


def _array_file(tmp_path, count=40, side=8, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (count, side, side), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    return path, images


def _load(name, path, tmp_path, **options):
    return data.load_dataset(name, path, cache_dir=tmp_path / "cache", progress=False, **options)


def _entry(tmp_path):
    (entry,) = sorted((tmp_path / "cache" / "converted").glob("*"))
    return entry


def _edit_meta(entry, edit):
    meta = json.loads((entry / "meta.json").read_text())
    edit(meta)
    (entry / "meta.json").write_text(json.dumps(meta))


def _cache_sha256(entry):
    return hashlib.sha256((entry / "train.npy").read_bytes() + (entry / "test.npy").read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ the cache's digests


def test_a_damaged_cache_is_found_by_its_digest_and_converted_again_in_one_line(tmp_path, capsys):
    path, images = _array_file(tmp_path)
    healthy = _load("array", path, tmp_path, test_fraction=0.25).cache_digest
    entry = _entry(tmp_path)
    train = bytearray((entry / "train.npy").read_bytes())
    train[200:1000] = bytes(800)  # zeroed in place: the size stays, only the mtime moves
    (entry / "train.npy").write_bytes(bytes(train))
    with pytest.raises(VaelabError, match="is damaged .*train.npy then test.npy have SHA-256.*delete it"):
        image_source.read_converted(entry)  # without its source, a damaged entry is refused
    capsys.readouterr()
    again = _load("array", path, tmp_path, test_fraction=0.25)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is damaged" in lines[0] and "converting it again from" in lines[0]
    # what is reported is the digest of what is read, and the data are the source's again
    assert again.cache_digest == healthy == _cache_sha256(entry)
    assert sorted(again.train.images[:, 0].numpy().tobytes() + again.test.images[:, 0].numpy().tobytes()) == sorted(
        images.tobytes()
    )


def test_the_digest_in_meta_json_is_checked_not_believed(tmp_path, capsys):
    path, _ = _array_file(tmp_path)
    healthy = _load("array", path, tmp_path, test_fraction=0.25).cache_digest
    entry = _entry(tmp_path)
    _edit_meta(entry, lambda meta: meta.update(cache_digest="0" * 64))
    again = _load("array", path, tmp_path, test_fraction=0.25)
    assert "cache_digest is 0000000000000000" in capsys.readouterr().err
    assert again.cache_digest == healthy == json.loads((entry / "meta.json").read_text())["cache_digest"]


def test_damaged_labels_are_found_too(tmp_path, capsys):
    path, _ = _array_file(tmp_path)
    labels = _load("array", path, tmp_path, test_fraction=0.25).train.labels.tolist()  # a copy: the cache is mapped
    entry = _entry(tmp_path)
    np.save(entry / "train_labels.npy", np.load(entry / "train_labels.npy") + 3)  # same size, other classes
    again = _load("array", path, tmp_path, test_fraction=0.25)
    assert "train_labels.npy then test_labels.npy" in capsys.readouterr().err
    assert again.train.labels.tolist() == labels


def test_a_run_start_reads_the_remembered_digest_and_hashes_only_moved_files(tmp_path, monkeypatch):
    path, _ = _array_file(tmp_path)
    _load("array", path, tmp_path, test_fraction=0.25)
    entry = _entry(tmp_path)
    hashed = []  # the cache's files hashed; an array source is hashed for its identity each time, not counted
    real = integrity.sha256_files

    def counted(paths):
        hashed.extend([path.name for path in paths] if paths[0].parent == entry else [])
        return real(paths)

    monkeypatch.setattr(integrity, "sha256_files", counted)
    _load("array", path, tmp_path, test_fraction=0.25)
    assert hashed == []  # sizes and mtimes unchanged: a stat, no reading of the cache
    status = (entry / "test.npy").stat()
    os.utime(entry / "test.npy", ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    again = _load("array", path, tmp_path, test_fraction=0.25)
    assert hashed == ["train.npy", "test.npy"] and again.cache_digest == _cache_sha256(entry)


def test_an_entry_written_before_labels_digest_is_verified_by_its_cache_digest(tmp_path, capsys):
    path, _ = _array_file(tmp_path)
    first = _load("array", path, tmp_path, test_fraction=0.25)
    entry = _entry(tmp_path)
    _edit_meta(entry, lambda meta: meta.pop("labels_digest"))
    for stamp in ("cache.sha256", "labels.sha256"):
        (entry / stamp).unlink()
    created = json.loads((entry / "meta.json").read_text())["created"]
    assert _load("array", path, tmp_path, test_fraction=0.25).cache_digest == first.cache_digest
    assert capsys.readouterr().err == "" and json.loads((entry / "meta.json").read_text())["created"] == created
    (entry / "test.npy").write_bytes((entry / "test.npy").read_bytes()[:-1] + b"\x01")
    assert _load("array", path, tmp_path, test_fraction=0.25).cache_digest == first.cache_digest
    assert "is damaged" in capsys.readouterr().err


def _png_set(tmp_path, count=5):
    root = tmp_path / "set"
    root.mkdir()
    for i, array in enumerate(np.random.default_rng(0).integers(0, 256, (count, 4, 4), dtype=np.uint8)):
        Image.fromarray(array).save(root / f"{i}.png")
    return root


def test_a_folder_s_file_names_are_covered_by_their_digest(tmp_path, capsys):
    root = _png_set(tmp_path)
    names = _load("folder", root, tmp_path, test_fraction=0.4).train.names
    entry = _entry(tmp_path)
    listed = json.loads((entry / "names.json").read_text())
    listed["train"].reverse()  # the same bytes in another order: images and names no longer agree
    (entry / "names.json").write_text(json.dumps(listed))
    with pytest.raises(VaelabError, match="names.json have SHA-256"):
        image_source.read_converted(entry)
    again = _load("folder", root, tmp_path, test_fraction=0.4)
    assert "is damaged" in capsys.readouterr().err and again.train.names == names


def test_a_folder_s_entry_written_before_file_names_is_converted_again_once_in_one_line(tmp_path, capsys):
    root = _png_set(tmp_path)
    first = _load("folder", root, tmp_path, test_fraction=0.4)
    entry = _entry(tmp_path)
    _edit_meta(entry, lambda meta: meta.pop("names_digest"))  # as the entries written before names were
    for old in ("names.json", "names.sha256"):
        (entry / old).unlink()
    assert image_source.read_converted(entry).train_names is None  # without its source: read, with no names
    again = _load("folder", root, tmp_path, test_fraction=0.4)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "written before file names were recorded; converting it again" in lines[0]
    assert (again.train.names, again.test.names) == (first.train.names, first.test.names)
    assert again.cache_digest == first.cache_digest and _entry(tmp_path) == entry
    _load("folder", root, tmp_path, test_fraction=0.4)
    assert capsys.readouterr().err == ""  # once


# ------------------------------------------------------------------------------ meta.json's schema


@pytest.mark.parametrize(
    "edit, said",
    [
        (lambda meta: meta.pop("shape"), "lacks 'shape'"),
        (lambda meta: meta.update(shape="1x8x8"), "'shape' is '1x8x8' (str), expected list"),
        (lambda meta: meta.update(shape=[1, 8]), "not three positive integers"),
        (lambda meta: meta.update(train="30"), "'train' is '30' (str), expected int"),
        (lambda meta: meta.update(classes=3), "'classes' is 3 (int), expected list"),
        (lambda meta: meta.update(cache_digest=None), "'cache_digest' is None"),
    ],
)
def test_meta_json_with_a_missing_key_or_a_wrong_type_is_one_line_and_converted_again(tmp_path, capsys, edit, said):
    path, _ = _array_file(tmp_path)
    first = _load("array", path, tmp_path, test_fraction=0.25)
    entry = _entry(tmp_path)
    _edit_meta(entry, edit)
    (listed,) = data.converted(tmp_path / "cache")
    assert said in listed["problem"]
    with pytest.raises(VaelabError, match="is damaged"):
        image_source.read_converted(entry)
    again = _load("array", path, tmp_path, test_fraction=0.25)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and said in lines[0]
    assert again.cache_digest == first.cache_digest and again.classes == ()


def test_data_info_lists_an_entry_with_a_bad_meta_json_as_a_problem(tmp_path, capsys, monkeypatch):
    path, _ = _array_file(tmp_path)
    _load("array", path, tmp_path, test_fraction=0.25)
    _edit_meta(_entry(tmp_path), lambda meta: meta.update(classes=3))
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    from vaelab.cli import main

    assert main(["data", "info"]) == 0
    assert "'classes' is 3 (int), expected list" in capsys.readouterr().out


# ------------------------------------------------------------------------------ room on the disk


def test_a_cache_larger_than_the_free_space_is_refused_before_the_disk_is_touched(tmp_path, monkeypatch):
    path, _ = _array_file(tmp_path)

    def reserve(*args):  # fails fast: a conversion that got this far would go on to resize into 400 GB
        raise AssertionError("the cache was reserved before its size was checked")

    monkeypatch.setattr(os, "posix_fallocate", reserve, raising=False)
    with pytest.raises(VaelabError, match=r"40 images of 1x100000x100000 .* needs 400 GB but .* free.*--image-size"):
        _load("array", path, tmp_path, test_fraction=0.25, image_size=100000)
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(integrity, "free_bytes", lambda directory: (1 << 30) + 100)  # under 1 GiB to spare
    with pytest.raises(VaelabError, match=r"needs 2.88 kB but .* has 1.07 GB free \(and keeps 1 GiB"):
        _load("array", path, tmp_path, test_fraction=0.25)
    assert not (tmp_path / "cache").exists()


def test_huge_images_without_image_size_are_refused_with_their_cache_size(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(2):
        Image.new("RGB", (4000, 4000), (i, 0, 0)).save(root / f"{i}.png")
    with pytest.raises(VaelabError, match=r"2 images of 3x4000x4000 .* make a 0.096 GB cache.*--image-size S"):
        _load("folder", root, tmp_path, test_fraction=0.5)
    assert not (tmp_path / "cache").exists()
    assert _load("folder", root, tmp_path, test_fraction=0.5, image_size=8).image_shape == (3, 8, 8)


# ------------------------------------------------------------------------------ one line per bad input


def _grey_pngs(directory, count, seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(np.random.default_rng(seed).integers(0, 256, (count, 4, 4), dtype=np.uint8)):
        Image.fromarray(array).save(directory / f"{i}.png")


def test_a_file_name_that_is_not_utf8_is_read_and_named_on_one_line(tmp_path, capsys):
    root = tmp_path / "odd"
    _grey_pngs(root, 3)
    odd = os.path.join(os.fsencode(root), b"\xff\xfe.png")
    with open(odd, "wb") as file:
        file.write((root / "0.png").read_bytes())
    dataset = _load("folder", root, tmp_path, test_fraction=0.25)
    assert len(dataset.train.images) + len(dataset.test.images) == 4
    with open(odd, "wb") as file:
        file.write(b"not an image")
    with pytest.raises(VaelabError, match=r"^'\\udcff\\udcfe.png': not a readable PNG/JPEG") as refused:
        _load("folder", root, tmp_path, test_fraction=0.25)
    str(refused.value).encode()  # printable as it is: no surrogate left to fail on a UTF-8 terminal


def test_a_newline_in_a_file_name_does_not_split_the_error_line(tmp_path):
    root = tmp_path / "lines"
    _grey_pngs(root, 3)
    (root / "bad\nname.png").write_bytes(b"not an image")
    with pytest.raises(VaelabError, match=r"^'bad\\nname.png': not a readable PNG/JPEG") as refused:
        _load("folder", root, tmp_path, test_fraction=0.25)
    assert "\n" not in str(refused.value) and "replace or remove the file" in str(refused.value)


def _npz_claiming(path, rows):
    """An .npz whose member images.npy has a header for (rows, 8, 8) uint8 and 1000 bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (rows, 8, 8)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue() + bytes(1000))
    return path


def test_an_npz_member_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    path = _npz_claiming(tmp_path / "lying.npz", 10**15 // 64)
    with pytest.raises(VaelabError, match=r"'images' claims 1,000,000,000,000,000 bytes but holds 1,000"):
        _load("array", path, tmp_path, test_fraction=0.25)


@pytest.mark.parametrize("cut", ["half", "tail"])
def test_a_truncated_npz_is_refused(tmp_path, cut):
    whole = tmp_path / "whole.npz"
    np.savez(whole, images=np.zeros((40, 8, 8), dtype=np.uint8))
    raw = whole.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(raw[: len(raw) // 2] if cut == "half" else raw[:-30])
    with pytest.raises(VaelabError, match="cannot read .*cut.npz as numpy data"):
        _load("array", path, tmp_path, test_fraction=0.25)


@pytest.mark.parametrize("label, dtype", [(2**62, np.int64), (2**63 + 5, np.uint64)])
def test_labels_far_beyond_class_numbers_are_refused(tmp_path, label, dtype):
    path = tmp_path / "labelled.npz"
    np.savez(path, images=np.zeros((40, 8, 8), dtype=np.uint8), labels=np.full(40, label, dtype=dtype))
    with pytest.raises(VaelabError, match=f"label {label} is above 1048575; .*number the classes 0..n-1"):
        _load("array", path, tmp_path, test_fraction=0.25)


def test_a_class_folder_that_cannot_be_listed_is_refused_not_skipped(tmp_path, monkeypatch):
    root = tmp_path / "classes"
    _grey_pngs(root / "a", 10)
    _grey_pngs(root / "b", 10, seed=1)
    real = os.scandir

    def scandir(path):  # chmod 000 does not stop root, so the refusal is made here
        if os.fspath(path).endswith(os.sep + "b"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(VaelabError, match=r"cannot list the folder .*/b \(Permission denied\): its images would be"):
        _load("folder", root, tmp_path, test_fraction=0.25)
