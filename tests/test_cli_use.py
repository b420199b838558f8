"""`vaelab encode`, `reconstruct` and `score` on a trained run: per-image results in input order that agree with the
Python API and with `vaelab evaluate`, resumable shards, and bad input refused in one line."""

import csv
import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from vaelab.checkpoint import load_model
from vaelab.data import load_dataset

from conftest import interrupted, run_ok, run_refused
from test_distributed import TINY

pytestmark = pytest.mark.usefixtures("plain_torch")


@pytest.fixture
def tiny_run(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir(n_train=24, n_test=14)
    run = tmp_path / "run"
    run_ok(
        [
            "train",
            *TINY,
            "--data-dir",
            str(data_dir),
            "--epochs",
            "1",
            "--binarize",
            "dynamic",
            "--out",
            str(run),
            "--no-progress",
            "--validation-size",
            "6",
        ],
        capsys,
    )
    return run, data_dir


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_score_averages_to_evaluate_and_matches_the_api(tiny_run, tmp_path, capsys):
    run, data_dir = tiny_run
    run_ok(
        [
            "evaluate",
            "--checkpoint",
            str(run),
            "--k",
            "1",
            "7",
            "--no-laplace",
            "--no-progress",
            "--out",
            str(tmp_path / "eval"),
        ],
        capsys,
    )
    out = run_ok(
        [
            "score",
            "--checkpoint",
            str(run),
            "--k",
            "1",
            "7",
            "--out",
            str(tmp_path / "s"),
            "--no-progress",
            "--shard-images",
            "4",
        ],
        capsys,
    )
    assert "binarization: dynamic" in out
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    rows = _rows(tmp_path / "s" / "scores.csv")
    test = load_dataset("idx", data_dir).test
    assert [int(row["index"]) for row in rows] == list(range(14))
    assert [int(row["label"]) for row in rows] == test.labels.tolist()
    for estimate in report["iwae"]:
        per_image = np.array([float(row[f"L_{estimate['k']}"]) for row in rows])
        assert per_image.mean() == pytest.approx(estimate["mean"], abs=1e-9)
    elbo = np.array([float(row["elbo"]) for row in rows])
    terms = np.array([float(row["reconstruction"]) + float(row["kl"]) for row in rows])
    np.testing.assert_allclose(-elbo, terms, rtol=1e-12)
    assert elbo.mean() == pytest.approx(report["elbo"]["mean"], abs=1e-9)
    # bits/dim of a binarized Bernoulli model: -L_kmax / (784 ln 2)
    bits = np.array([float(row["bits_per_dim"]) for row in rows])
    np.testing.assert_allclose(bits, -np.array([float(r["L_7"]) for r in rows]) / (784 * np.log(2)), rtol=1e-12)
    # the API gives the same per-image values for the same images, binarization and seed
    model, config = load_model(run)
    api = vaelab.score(model, test.images, ks=(1, 7), binarize=config.binarize, seed=0)
    saved = np.load(tmp_path / "s" / "scores.npz")
    np.testing.assert_allclose(api["L_7"], saved["L_7"], rtol=1e-12)
    assert json.loads(str(saved["meta"]))["images"] == 14
    assert (tmp_path / "s" / "scores.png").stat().st_size > 0
    assert not list((tmp_path / "s").glob("score.partial-*"))  # shards removed once the results are written


def test_score_resumes_from_its_shards_and_refuses_to_overwrite(tiny_run, tmp_path, capsys, monkeypatch):
    run, _ = tiny_run
    args = ["score", "--checkpoint", str(run), "--k", "1", "5", "--no-progress", "--shard-images", "4"]
    run_ok([*args, "--out", str(tmp_path / "straight")], capsys)
    interrupted(monkeypatch, [*args, "--out", str(tmp_path / "cut")])
    assert not (tmp_path / "cut" / "scores.csv").exists()
    out = run_ok([*args, "--out", str(tmp_path / "cut")], capsys)
    assert "resumed: 8 images" in out
    assert _rows(tmp_path / "cut" / "scores.csv") == _rows(tmp_path / "straight" / "scores.csv")
    before = (tmp_path / "cut" / "scores.csv").read_bytes()
    run_refused(
        [*args, "--out", str(tmp_path / "cut")], capsys, "scores.csv exists; choose another --out or pass --overwrite"
    )
    assert (tmp_path / "cut" / "scores.csv").read_bytes() == before  # nothing already written is lost
    run_ok([*args, "--out", str(tmp_path / "cut"), "--overwrite", "--seed", "3"], capsys)
    assert (tmp_path / "cut" / "scores.csv").read_bytes() != before


def test_encode_gives_posterior_means_not_draws_and_matches_the_api(tiny_run, tmp_path, capsys):
    run, data_dir = tiny_run
    run_ok(
        [
            "encode",
            "--checkpoint",
            str(run),
            "--out",
            str(tmp_path / "e"),
            "--samples",
            "3",
            "--split",
            "validation",
            "--no-progress",
        ],
        capsys,
    )
    model, config = load_model(run)
    images = load_dataset("idx", data_dir).train.images[-6:]
    saved = np.load(tmp_path / "e" / "latents.npz")
    x = vaelab.data.binarize(vaelab.data.pixels(images), "dynamic", torch.Generator().manual_seed(0))
    with torch.no_grad():
        posterior = model.posterior(x)
    np.testing.assert_allclose(saved["mean_1"], posterior.mu.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(saved["logvar_1"], posterior.logvar.numpy(), rtol=1e-6, atol=1e-7)
    assert saved["z"].shape == (6, 3, 2)
    # the draws are from q(z|x): standardised, they are the encoder's noise, not the mean
    assert not np.allclose(saved["z"][:, 0], saved["mean_1"])
    api = vaelab.encode(model, images, binarize="dynamic", seed=0, samples=3)
    np.testing.assert_allclose(api["z"], saved["z"], rtol=1e-6)
    rows = _rows(tmp_path / "e" / "latents.csv")
    assert list(rows[0]) == ["index", "label", "mean_1_0", "mean_1_1", "logvar_1_0", "logvar_1_1"]
    assert float(rows[5]["mean_1_1"]) == pytest.approx(float(saved["mean_1"][5, 1]), rel=1e-6)
    assert "file" not in saved  # IDX files have no file per image


def test_reconstruct_writes_means_at_the_posterior_mean_and_a_picture(tiny_run, tmp_path, capsys):
    run, data_dir = tiny_run
    run_ok(
        ["reconstruct", "--checkpoint", str(run), "--out", str(tmp_path / "r"), "--size", "5", "--no-progress"], capsys
    )
    model, config = load_model(run)
    saved = np.load(tmp_path / "r" / "reconstructions.npz")
    images = load_dataset("idx", data_dir).test.images[:5]
    np.testing.assert_allclose(saved["mean"], vaelab.reconstruct(model, images, binarize="dynamic"), rtol=1e-6)
    assert saved["mean"].shape == saved["input"].shape == (5, 784)
    assert (tmp_path / "r" / "reconstructions.png").stat().st_size > 0


def test_bad_input_is_one_line(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    import numpy as np

    np.savez(tmp_path / "big.npz", train=np.zeros((4, 32, 32), np.uint8), test=np.zeros((3, 32, 32), np.uint8))
    base = ["score", "--checkpoint", str(run), "--no-progress"]
    run_refused([*base, "--k", "0", "--out", str(tmp_path / "a")], capsys, "every --k must be >= 1")
    run_refused(
        [*base, "--dataset", "array", "--data-dir", str(tmp_path / "big.npz"), "--out", str(tmp_path / "b")],
        capsys,
        "the images are 1x32x32 (C x H x W), the model takes 1x28x28; use --image-size 28",
    )
    run_refused([*base, "--size", "99", "--out", str(tmp_path / "c")], capsys, "--size 99 exceeds the 14 images")
    run_refused(
        [*base, "--split", "validation", "--dataset", "mnist", "--out", str(tmp_path / "d")],
        capsys,
        "--split validation is the run's held-out training images",
    )
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_a_model_refuses_an_empty_set_and_wrong_shapes_in_the_api(tiny_run):
    run, _ = tiny_run
    model, _ = load_model(run)
    with pytest.raises(vaelab.VaelabError, match="non-empty"):
        vaelab.encode(model, torch.zeros((0, 28, 28), dtype=torch.uint8))
    with pytest.raises(vaelab.VaelabError, match="3x28x28 .* takes 1x28x28; use images of 1 channel"):
        vaelab.score(model, torch.zeros((2, 3, 28, 28), dtype=torch.uint8))


@pytest.mark.slow
def test_torchrun_splits_score_s_shards_with_one_process_s_result(tiny_run, tmp_path, capsys):
    from test_distributed import torchrun

    run, _ = tiny_run
    args = ["score", "--checkpoint", str(run), "--k", "1", "5", "--no-progress", "--shard-images", "4"]
    run_ok([*args, "--out", str(tmp_path / "one")], capsys)
    launched = torchrun([*args, "--out", str(tmp_path / "two")], tmp_path / "logs")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert _rows(tmp_path / "two" / "scores.csv") == _rows(tmp_path / "one" / "scores.csv")


def test_a_second_writer_of_one_out_directory_is_refused(tiny_run, tmp_path, capsys, lock_holder):
    run, _ = tiny_run
    lock_holder(tmp_path / "busy")
    run_refused(
        ["score", "--checkpoint", str(run), "--k", "1", "--no-progress", "--out", str(tmp_path / "busy")],
        capsys,
        "is being written by",
    )
    assert not (tmp_path / "busy" / "scores.csv").exists()


# ------------------------------------------------------------------------------ a folder's file names

CLASSES = {'commas, and "quotes"': 7, "plain": 9}  # 16 images of 6x5: 4 test, 12 train of which 4 validation


@pytest.fixture
def folder_run(tmp_path, capsys, monkeypatch):
    """A run trained (threshold binarization: no draws) on a folder of class folders of random 6x5 PNGs whose
    names need quoting in a CSV (a comma, quotes, a newline)."""
    root = tmp_path / "pictures"
    rng = np.random.default_rng(0)
    for name, count in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            file = "new\nline.png" if (name, i) == ("plain", 3) else f"{i:02d}.png"
            Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(root / name / file)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    run = tmp_path / "run"
    data = ["--dataset", "folder", "--data-dir", str(root), "--test-fraction", "0.25"]
    model = ["--hidden", "8", "--latent-dim", "2", "--batch-size", "4", "--binarize", "threshold"]
    run_ok(
        ["train", *data, *model, "--validation-size", "4", "--epochs", "1", "--out", str(run), "--no-progress"], capsys
    )
    return run, root


def _pictures(root, files):
    """The PNGs at root/FILE, in order: uint8 (N, 1, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(root / file)) for file in files]))[:, None]


def _label_of(file):
    return sorted(CLASSES).index(file.split("/")[0])


def test_score_and_encode_name_each_row_s_file_in_input_order(folder_run, tmp_path, capsys):
    run, root = folder_run
    model, _ = load_model(run)
    base = ["--checkpoint", str(run), "--no-progress", "--shard-images", "3"]
    run_ok(["score", *base, "--k", "1", "3", "--out", str(tmp_path / "s")], capsys)
    rows = _rows(tmp_path / "s" / "scores.csv")
    test_files = [row["file"] for row in rows]
    assert list(rows[0])[:3] == ["index", "label", "file"] and len(rows) == 4
    assert [int(row["label"]) for row in rows] == [_label_of(file) for file in test_files]
    assert np.load(tmp_path / "s" / "scores.npz")["file"].tolist() == test_files
    # row i's numbers are those of file i's pixels (each image has its own seed by index: the order matters too)
    api = vaelab.score(model, _pictures(root, test_files), ks=(1, 3), binarize="threshold", seed=0)
    np.testing.assert_allclose([float(row["L_3"]) for row in rows], api["L_3"], rtol=1e-6)
    run_ok(["encode", *base, "--split", "validation", "--out", str(tmp_path / "e")], capsys)
    rows = _rows(tmp_path / "e" / "latents.csv")
    held_out = [row["file"] for row in rows]
    assert len(held_out) == 4 and not set(held_out) & set(test_files)
    api = vaelab.encode(model, _pictures(root, held_out), binarize="threshold")
    np.testing.assert_allclose([[float(row[f"mean_1_{j}"]) for j in (0, 1)] for row in rows], api["mean_1"], rtol=1e-6)
    # the train split's first --size 8 images (the 8 not held out), through reconstruct's arrays
    run_ok(["reconstruct", *base, "--split", "train", "--size", "8", "--out", str(tmp_path / "r")], capsys)
    saved = np.load(tmp_path / "r" / "reconstructions.npz")
    first = saved["file"].tolist()
    np.testing.assert_allclose(
        saved["mean"], vaelab.reconstruct(model, _pictures(root, first), binarize="threshold"), rtol=1e-6
    )
    every = [path.relative_to(root).as_posix() for path in root.rglob("*.png")]
    assert sorted(first + held_out + test_files) == sorted(every)  # each file once, "plain/new\nline.png" too


def test_an_old_cache_without_file_names_is_converted_again_and_gives_them(folder_run, tmp_path, capsys):
    from vaelab.cli import main

    run, root = folder_run
    (entry,) = (tmp_path / "cache" / "converted").glob("*")
    meta = json.loads((entry / "meta.json").read_text())
    del meta["names_digest"]  # as entries were written before file names were recorded
    (entry / "meta.json").write_text(json.dumps(meta))
    (entry / "names.json").unlink()
    args = ["encode", "--checkpoint", str(run), "--no-progress", "--split", "test", "--out", str(tmp_path / "e")]
    assert main(args) == 0
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "written before file names were recorded; converting it again" in said[0]
    files = [row["file"] for row in _rows(tmp_path / "e" / "latents.csv")]
    assert len(files) == 4 and all((root / file).is_file() for file in files)


def test_file_names_are_quoted_and_bytes_that_are_not_utf8_written_as_hex(tmp_path):
    from vaelab.cli import common
    from vaelab.data.selection import Selection

    names = ('a, "b"/new\nline.png', os.fsdecode(b"c/\xff.png"))
    selection = Selection(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), "folder", "test", "", names)
    inputs = types.SimpleNamespace(selection=selection)
    values = {"score": torch.tensor([0.5, 1.5], dtype=torch.float64)}
    rows = _rows(common.write_csv(tmp_path, "t", inputs, values))
    assert [row["file"] for row in rows] == ['a, "b"/new\nline.png', "c/\\xff.png"]
    saved = np.load(common.write_npz(tmp_path, "t", inputs, values, {}))
    assert saved["file"].tolist() == [row["file"] for row in rows] and saved["score"].tolist() == [0.5, 1.5]


def test_an_array_without_a_split_is_scored_whole_and_in_order(tiny_run, tmp_path, capsys):
    """A user's own .npy of images (no train/test parts) is one set to the use verbs: every image, in order, as the
    Python API scores the same array; --split train names why there is none."""
    run, _ = tiny_run
    stack = np.random.default_rng(9).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "mine.npy", stack)
    base = ["score", "--checkpoint", str(run), "--dataset", "array", "--data-dir", str(tmp_path / "mine.npy")]
    run_ok([*base, "--k", "3", "--out", str(tmp_path / "all"), "--no-progress"], capsys)
    rows = _rows(tmp_path / "all" / "scores.csv")
    assert [int(row["index"]) for row in rows] == [0, 1, 2, 3, 4]
    model, config = load_model(run / "checkpoint.pt")
    api = vaelab.score(model, stack, ks=(3,), binarize=config.binarize, seed=0)
    np.testing.assert_allclose([float(row["L_3"]) for row in rows], api["L_3"], rtol=1e-6)
    run_refused(
        [*base, "--split", "train", "--out", str(tmp_path / "t"), "--no-progress"],
        capsys,
        "the train split of array holds no images (a source without train/ and test/ parts is all test images)",
    )
